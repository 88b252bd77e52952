"""The public F2LLM-v2 data recipe in one process: names -> format / language / instruction,
both layouts, their errors, download offline, and the experiments' data (the recipe's commands
as a user types them, `scripts/f2llm_v2_data.py` and the `Done when` training:
tests/commands/test_f2llm_v2_data.py; two processes building one corpus:
tests/distributed/test_f2llm_v2_build.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from f2llm.data.corpus_io import read_corpus
from f2llm.data.records import DataError, check_language_code
from f2llm.data.sources.f2llm_v2 import (
    EXAMPLE_NAMES,
    FORMAT_OF_NAME,
    UnknownDatasetError,
    build_f2llm_v2_corpus,
    check_tokenizer,
    instruction_for,
    name_language,
    resolve_recipes,
    write_synthetic,
)
from f2llm.data.sources.f2llm_v2.names import CLASSIFICATION, CLUSTERING, RETRIEVAL
from f2llm.data.sources.f2llm_v2.recipes import ISO_639_3_TO_1
from f2llm.model.encoder import QUERY_TEMPLATE
from f2llm.model.tokenizer import load_tokenizer
from tests.conftest import CONFIGS, F2LLM_V2_EXAMPLES, compose_train, word_level_tokenizer

NAMES = list(EXAMPLE_NAMES)


def _prompt(instruction: str) -> str:
    return QUERY_TEMPLATE.format(task=instruction, text="\x00").split("\x00")[0]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


# ---------------------------------------------------------------------------------------------
# Names


def test_the_official_lists_are_complete_and_disjoint() -> None:
    assert (len(CLASSIFICATION), len(CLUSTERING), len(RETRIEVAL)) == (10, 33, 459)
    assert len(FORMAT_OF_NAME) == 502  # no name on two lists


@pytest.mark.parametrize("name", sorted(FORMAT_OF_NAME))
def test_every_official_name_resolves(name: str) -> None:
    (recipe,) = resolve_recipes([name])
    assert recipe.format == FORMAT_OF_NAME[name]
    assert recipe.instruction and recipe.instruction == instruction_for(name, recipe.format)
    language = recipe.language
    if language.startswith("code:"):
        assert language[5:].isalpha() or language[5:] in {"csharp", "cpp"}, language
    else:
        assert check_language_code(language) is None, language
    parts = name.split("_")
    if name.startswith(("csn_", "xcodeeval_", "ocr2_", "codefeedback_")) or name in (
            "cosqa", "synthetic_text2sql", "procqa", "stackoverflow_qa", "ocgi", "ocgi_part2"):
        assert language.startswith("code:")
    elif name.startswith("webfaq_"):
        assert language == ISO_639_3_TO_1[parts[-1]]
    elif name.startswith(("unpc_", "paracrawl_")) or (name.startswith("clirmatrix_")
                                                      and "-" in name):
        src, tgt = recipe.direction.split("->")
        assert language == src and name.endswith((f"{src}2{tgt}", f"{src}-{tgt}"))
    elif parts[-1] in ("p2p", "s2s", "part2", "part3", "qa"):
        assert language == "mul" or len(parts) > 2 or name == "persian_qa"
    if not name.startswith(("unpc_", "paracrawl_", "clirmatrix_")):
        assert recipe.direction is None


@pytest.mark.parametrize(("name", "language", "direction"), [
    ("webfaq_deu", "de", None), ("miracl_ar", "ar", None), ("mmarco_german", "de", None),
    ("nordic_sts_danish", "da", None), ("unpc_ar2en", "ar", "ar->en"),
    ("paracrawl_en-sw", "en", "en->sw"), ("clirmatrix_ar-fr", "ar", "ar->fr"),
    ("paracrawl_en-azj", "en", "en->azj"), ("clirmatrix_nn-pms", "nn", "nn->pms"),
    ("mkqa_zh_tw", "zh_TW", None), ("mqa_no", "no", None), ("ru_sentiment", "ru", None),
    ("xcodeeval_nl2code_Rust", "code:rust", None), ("xcodeeval_code2code_C#", "code:csharp", None),
    ("csn_ccr_python", "code:python", None), ("cosqa", "code:python", None),
    ("codefeedback_st", "code:mul", None),  # `st` is Sesotho's code, not here
    ("arxiv_clustering_p2p", None, None), ("stackexchangedupquestions_s2s", None, None),
    ("msmarco", None, None), ("sts22_multilingual", "mul", None),
])
def test_language_from_the_name(name: str, language: str | None, direction: str | None) -> None:
    assert name_language(name) == (language, direction)


def test_unknown_names_are_listed_at_once_with_the_map_to_fix_them(tmp_path: Path) -> None:
    root = write_synthetic(tmp_path / "raw", "raw", ["msmarco", "my_faq", "my_topics"], 8)
    with pytest.raises(UnknownDatasetError) as e:
        build_f2llm_v2_corpus(root, tmp_path / "out")
    message = str(e.value)
    assert "2 dataset(s)" in message and "my_faq, my_topics" in message
    assert "data.corpus.datasets" in message
    overrides = {"my_faq": {"format": "retrieval", "language": "de"},
                 "my_topics": {"format": "clustering", "instruction": "Find the topic"}}
    found = build_f2llm_v2_corpus(root, tmp_path / "out", datasets=overrides)
    recipes = {r.name: r for r in found.recipes}
    assert (recipes["my_faq"].language, recipes["my_faq"].source) == ("de", "override")
    assert (recipes["my_topics"].format, recipes["my_topics"].language) == ("clustering", "mul")
    assert recipes["my_topics"].instruction == "Find the topic"


def test_a_language_column_is_used_where_the_name_says_none(tmp_path: Path) -> None:
    root = write_synthetic(tmp_path / "raw", "raw", ["msmarco", "miracl_ar"], 6)
    for name in ("msmarco", "miracl_ar"):
        table = pq.read_table(root / f"{name}.parquet")
        table = table.append_column("language", pa.array(["fr", "en"] * 3))
        pq.write_table(table, root / f"{name}.parquet")
    found = build_f2llm_v2_corpus(root, tmp_path / "out")
    corpus = read_corpus(found.train[0].path)
    assert corpus.dataset("msmarco").column("language").to_pylist() == ["fr", "en"] * 3
    assert set(corpus.dataset("miracl_ar").column("language").to_pylist()) == {"ar"}


# ---------------------------------------------------------------------------------------------
# Layouts


def test_raw_layout_streams_into_the_canonical_corpus(tmp_path: Path) -> None:
    root = write_synthetic(tmp_path / "raw", "raw", NAMES, 20)
    found = build_f2llm_v2_corpus(root, tmp_path / "out")
    corpus = read_corpus(found.train[0].path)
    assert sorted(corpus.datasets) == sorted(NAMES)
    for name in NAMES:
        rows = corpus.dataset(name)
        source = pq.read_table(root / f"{name}.parquet")
        assert rows.column("query").to_pylist() == source.column("query").to_pylist()
        assert rows.column("negative_1").to_pylist() == source.column("negative_1").to_pylist()
        fmt, language = F2LLM_V2_EXAMPLES[name]
        assert set(rows.column("language").to_pylist()) == {language}
        assert set(rows.column("format").to_pylist()) == {fmt}
        k = 1 if fmt == "classification" else 24
        assert corpus.datasets[name].num_negatives == k
    assert set(corpus.dataset("unpc_ar2en").column("direction").to_pylist()) == {"ar->en"}


def test_batches_read_ahead_are_the_files_batches_in_order(tmp_path: Path) -> None:
    """The ingest reads the next batch in a background thread: same batches, same order, the
    reader's errors raised in the caller, and a caller that stops early does not hang."""
    from f2llm.data.sources.f2llm_v2.layout import BATCH_ROWS, parquet_batches

    path = tmp_path / "x.parquet"
    n = 3 * BATCH_ROWS + 5
    pq.write_table(pa.table({"a": np.arange(n), "b": [str(i) for i in range(n)]}), path,
                   row_group_size=BATCH_ROWS // 2 + 1)
    got = list(parquet_batches(path, ["b", "a"]))
    want = list(pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=["b", "a"]))
    assert [b.num_rows for b in got] == [b.num_rows for b in want] and len(got) > 3
    assert pa.Table.from_batches(got).equals(pa.Table.from_batches(want))
    early = parquet_batches(path, ["a"])
    assert next(early).column(0)[0].as_py() == 0
    early.close()
    data = bytearray(path.read_bytes())  # a damaged page mid-file: the footer still reads
    data[len(data) // 2: len(data) // 2 + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    with pytest.raises(OSError):
        list(parquet_batches(path, ["b", "a"]))


@pytest.mark.parametrize("layout", ["raw", "tokenized"])
def test_synthetic_files_take_a_row_group_size(tmp_path: Path, layout: str) -> None:
    """bench_ingest --row-group-rows: the synthetic files' row groups (peak RSS follows them)."""
    names = [CLASSIFICATION[0], RETRIEVAL[0]]
    for size, want in ((None, 1), (40, 3)):  # 100 rows: pyarrow's default, or 40 + 40 + 20
        root = write_synthetic(tmp_path / f"{layout}_{size}", layout, names, 100,
                               num_negatives=3, row_group_size=size)
        files = sorted(root.glob("*.parquet"))
        assert files and {pq.ParquetFile(f).metadata.num_row_groups for f in files
                          if "corpus" not in f.name} == {want}


def test_the_corpus_writer_writes_behind_and_raises_a_failed_write(tmp_path: Path) -> None:
    """Batches are written in a background thread: all of them land in order, and a write
    that fails is raised by the next call, after which abort leaves no temporary file."""
    from f2llm.data.corpus_io import CorpusWriter
    from f2llm.data.records import SkipReport

    schema = pa.schema([("x", pa.int64())])
    writer = CorpusWriter(tmp_path / "c.arrow", schema, [], {})
    for k in range(5):
        writer.write(pa.record_batch([pa.array(range(10 * k, 10 * k + 10))], schema=schema))
    writer.finish([], SkipReport())
    table = pa.ipc.open_file(pa.memory_map(str(tmp_path / "c.arrow"))).read_all()
    assert table.column("x").to_pylist() == list(range(50))

    bad = CorpusWriter(tmp_path / "d.arrow", schema, [], {})
    bad.write(pa.record_batch([pa.array(["not", "an", "int"])], names=["x"]))
    with pytest.raises(pa.ArrowInvalid):
        bad.write(pa.record_batch([pa.array([1])], schema=schema))
    bad.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.arrow"]


@pytest.mark.parametrize("type_", [pa.string(), pa.large_string()])
def test_the_blank_check_of_the_ingest_equals_arrows_whole_string_check(type_) -> None:
    import pyarrow.compute as pc

    from f2llm.data.records import _blank

    rng = np.random.default_rng(0)
    alphabet = ["a", " ", "\t", "\n", "\u3000", "\u00a0", "é", "", "\x01", "z ", "日"]
    values = ["".join(rng.choice(alphabet, size=rng.integers(0, 4))) for _ in range(4000)]
    values = [None if rng.random() < 0.1 else v for v in values]
    column = pa.array(values, type=type_)
    for arr in (column, column.slice(7, 3000),
                pa.chunked_array([column.slice(0, 100), column.slice(100)])):
        expected = pc.or_(pc.equal(pc.utf8_length(arr), 0), pc.utf8_is_space(arr))
        expected = expected.fill_null(False).to_numpy(zero_copy_only=False)
        assert expected.any() and (~expected).any()
        np.testing.assert_array_equal(_blank(arr), expected)


def test_raw_queries_that_carry_an_instruction_get_none(tmp_path: Path) -> None:
    root = write_synthetic(tmp_path / "raw", "raw", ["msmarco", "banking77"], 6)
    table = pq.read_table(root / "msmarco.parquet")
    queries = [f"Instruct: Find it\nQuery: {q}" for q in table.column("query").to_pylist()]
    table = table.set_column(0, "query", pa.array(queries))
    pq.write_table(table, root / "msmarco.parquet")
    found = {d.name: d for d in build_f2llm_v2_corpus(root, tmp_path / "out").train}
    assert found["msmarco"].instruction is None
    assert found["banking77"].instruction == instruction_for("banking77", "clustering")


def test_a_built_corpus_is_reused_by_fingerprint_and_rebuilt_when_a_file_changes(
        tmp_path: Path) -> None:
    root = write_synthetic(tmp_path / "raw", "raw", ["msmarco", "mela"], 10)
    path = Path(build_f2llm_v2_corpus(root, tmp_path / "out").train[0].path)
    stamp = path.stat().st_mtime_ns
    assert Path(build_f2llm_v2_corpus(root, tmp_path / "out").train[0].path) == path
    assert path.stat().st_mtime_ns == stamp  # reused, not rewritten
    write_synthetic(root, "raw", ["mela"], 12, seed=3)
    build_f2llm_v2_corpus(root, tmp_path / "out")
    assert read_corpus(path).datasets["mela"].num_rows == 12


def _with_language_column(root: Path, layout: str, name: str) -> None:
    # A per-record language column: several groups in one dataset.
    path = root / (f"{name}.parquet" if layout == "raw" else f"{name}_query.parquet")
    table = pq.read_table(path)
    languages = ["fr", "en", "de"] * (table.num_rows // 3) + ["fr"] * (table.num_rows % 3)
    pq.write_table(table.append_column("language", pa.array(languages)), path)


@pytest.mark.parametrize("layout", ["raw", "tokenized"])
def test_group_indices_are_stored_with_the_corpus_and_read_at_startup(
        tmp_path: Path, tokenizer, layout: str, caplog: pytest.LogCaptureFixture) -> None:
    from hydra.utils import instantiate

    from f2llm.data.corpus import group_rows

    names = ["msmarco", "unpc_ar2en", "paracrawl_en-sw", "banking77", "mela"]
    root = write_synthetic(tmp_path / layout, layout, names, 30,
                           tokenizer=tokenizer if layout == "tokenized" else None)
    _with_language_column(root, layout, "msmarco")
    caplog.set_level("INFO")
    found = build_f2llm_v2_corpus(root, tmp_path / "data" / "f2llm_v2")
    assert "wrote the group indices" in caplog.text
    index = found.groups.path
    stamp = index.stat().st_mtime_ns
    caplog.clear()
    # A run on the built corpus: the datamodule of `train.py`, as the experiment composes it.
    cfg = compose_train([f"data.corpus.root={root}", "model=tiny", "trainer=cpu",
                         f"paths.data_dir={tmp_path / 'data'}", "data.batch_size=4",
                         "data.num_workers=0"], experiment="f2llm_v2_stage2")
    data = instantiate(cfg.data, encoder=instantiate(cfg.model))
    data.setup("fit")
    assert "reusing the F2LLM-v2 corpus" in caplog.text
    assert "group indices read from" in caplog.text
    assert "wrote the group indices" not in caplog.text  # read, not recomputed
    assert index.stat().st_mtime_ns == stamp
    assert data.plan.corpus.groups.path == index
    # Equal to the computation at startup they replace, for every grouping they serve.
    sampler = data.sampler.samplers[0]
    served = dict(zip(sampler.keys, sampler.groups, strict=True))
    assert len(served) == len(names) + 2  # msmarco has three languages
    for name in names:
        table = data.plan.tables[name]
        for columns in (["language", "direction"], ["language"], ["direction"]):
            stored = data.plan.corpus.groups.rows(name, columns)
            computed = group_rows(table, columns)
            assert stored.keys() == computed.keys(), (name, columns)
            for key, rows in computed.items():
                np.testing.assert_array_equal(stored[key], rows)
                if columns == ["language", "direction"]:
                    np.testing.assert_array_equal(served[f"{name}/{key}"], rows)
    assert data.plan.corpus.groups.rows("msmarco", ["format"]) is None  # not stored: computed
    assert data.plan.corpus.groups.rows("no_such_dataset", ["language"]) is None
    # A changed file rebuilds the corpus and its index (the fingerprint covers both).
    write_synthetic(root, layout, ["mela"], 12, seed=3,
                    tokenizer=tokenizer if layout == "tokenized" else None)
    rebuilt = build_f2llm_v2_corpus(root, tmp_path / "data" / "f2llm_v2")
    assert index.stat().st_mtime_ns != stamp
    assert [len(r) for r in rebuilt.groups.rows("mela", ["language"]).values()] == [12]


@pytest.mark.parametrize("shared", [False, True], ids=["per-dataset corpus", "corpus.parquet"])
def test_tokenized_layout_keeps_the_token_ids(tmp_path: Path, tokenizer, shared: bool) -> None:
    root = write_synthetic(tmp_path / "tok", "tokenized", NAMES, 16, tokenizer=tokenizer,
                           shared_corpus=shared)
    assert (root / "corpus.parquet").exists() == shared
    found = build_f2llm_v2_corpus(root, tmp_path / "out")
    pre = found.pretokenized
    assert pre.eos_id == tokenizer.eos_token_id or pre.eos_id == tokenizer("a")["input_ids"][-1]
    pre.bind(tokenizer, 4096, _prompt)
    pre = pickle.loads(pickle.dumps(pre))  # what a data-loader worker gets
    corpus = read_corpus(found.train[0].path)
    query = pq.read_table(root / "msmarco_query.parquet")
    docs = (pq.read_table(root / "corpus.parquet") if shared else
            pq.read_table(root / "msmarco_corpus.parquet")).to_pydict()
    by_id = dict(zip(docs["doc_id"], docs["input_ids"], strict=True))
    rows = np.arange(5)
    ids = pre.token_ids(corpus.dataset("msmarco"), rows, ["negative_1", "negative_2"], None)
    stored = query.slice(0, 5).to_pydict()
    assert ids[:5] == stored["query_input_ids"]
    assert ids[5:10] == [by_id[d] for d in stored["passage_input_ids"]]
    assert ids[10:15] == [by_id[d] for d in stored["negative_1_input_ids"]]
    assert ids[15:20] == [by_id[d] for d in stored["negative_2_input_ids"]]
    # Stage 2: the instruction's prefix ids before the stored query ids, EOS still last.
    instruction = found.train[NAMES.index("msmarco")].instruction
    instructed = pre.token_ids(corpus.dataset("msmarco"), rows, [], instruction)
    prefix = tokenizer(_prompt(instruction), add_special_tokens=False)["input_ids"]
    assert instructed[0] == prefix + stored["query_input_ids"][0]
    assert tokenizer.decode(instructed[0]).startswith(f"Instruct: {instruction}\nQuery: msmarco")
    # Cut to the max length as the official collate: EOS stays last.
    pre.max_length = 4
    assert all(len(t) <= 4 and t[-1] == pre.eos_id for t in pre.token_ids(
        corpus.dataset("msmarco"), rows, ["negative_1"], instruction))


# ---------------------------------------------------------------------------------------------
# Errors


def test_a_dangling_doc_id_names_file_row_and_field(tmp_path: Path, tokenizer) -> None:
    root = write_synthetic(tmp_path / "tok", "tokenized", ["msmarco", "mela"], 12,
                           tokenizer=tokenizer)
    path = root / "msmarco_query.parquet"
    table = pq.read_table(path)
    refs = table.column("negative_3_input_ids").to_pylist()
    refs[7] = "msmarco_999999"
    table = table.set_column(table.schema.get_field_index("negative_3_input_ids"),
                             "negative_3_input_ids", pa.array(refs))
    pq.write_table(table, path)
    with pytest.raises(DataError) as e:
        build_f2llm_v2_corpus(root, tmp_path / "out")
    message = str(e.value)
    assert str(path) in message and "row 7" in message
    assert "'negative_3_input_ids'" in message and "'msmarco_999999'" in message
    assert "dangling doc id" in message
    found = build_f2llm_v2_corpus(root, tmp_path / "out", on_bad_record="skip")
    assert found.skip_report.skipped == 1
    assert read_corpus(found.train[0].path).datasets["msmarco"].num_rows == 11


@pytest.mark.parametrize(("nulled", "field", "reason"), [
    (["passage_input_ids"], "passage_input_ids", "missing field: absent or null"),
    # retrieval needs 7 negatives: a row storing 6 is too few, named at its first absent one
    ([f"negative_{j}_input_ids" for j in range(7, 25)], "negative_7_input_ids",
     "6 stored, retrieval needs 7"),
    (["negative_2_input_ids"], "negative_2_input_ids", "numbered without gaps"),
], ids=["passage", "too few negatives", "a gap"])
def test_a_bad_tokenized_record_names_file_row_and_field(
        tmp_path: Path, tokenizer, nulled: list[str], field: str, reason: str) -> None:
    root = write_synthetic(tmp_path / "tok", "tokenized", ["msmarco", "mela"], 12,
                           tokenizer=tokenizer)
    path = root / "msmarco_query.parquet"
    table = pq.read_table(path)
    for column in nulled:
        refs = table.column(column).to_pylist()
        refs[5] = None
        table = table.set_column(table.schema.get_field_index(column), column, pa.array(refs))
    pq.write_table(table, path)
    with pytest.raises(DataError) as e:
        build_f2llm_v2_corpus(root, tmp_path / "out")
    message = str(e.value)
    assert str(path) in message and "row 5" in message and f"'{field}'" in message, message
    assert reason in message, message
    found = build_f2llm_v2_corpus(root, tmp_path / "out", on_bad_record="skip")
    assert found.skip_report.skipped == 1
    corpus = read_corpus(found.train[0].path)
    assert corpus.datasets["msmarco"].num_rows == 11
    assert corpus.datasets["msmarco"].num_negatives == 24  # the bad row is not counted


def test_tokenized_rows_may_store_fewer_negatives_than_the_file_has_columns(
        tmp_path: Path, tokenizer) -> None:
    root = write_synthetic(tmp_path / "tok", "tokenized", ["msmarco", "mela"], 12,
                           tokenizer=tokenizer)
    path = root / "msmarco_query.parquet"
    table = pq.read_table(path)
    for j in range(10, 25):  # row 3 stores 9 negatives: enough, and the fewest any row has
        column = f"negative_{j}_input_ids"
        refs = table.column(column).to_pylist()
        refs[3] = None
        table = table.set_column(table.schema.get_field_index(column), column, pa.array(refs))
    pq.write_table(table, path)
    found = build_f2llm_v2_corpus(root, tmp_path / "out")
    corpus = read_corpus(found.train[0].path)
    assert corpus.datasets["msmarco"].num_negatives == 9
    entry = corpus.datasets["msmarco"]
    rows = corpus.table.slice(entry.offset, entry.num_rows)  # every stored negative column
    assert rows.column("negative_9")[3].is_valid and not rows.column("negative_10")[3].is_valid
    assert rows.column("negative_24")[4].is_valid


def test_a_bad_raw_record_names_file_row_and_field(tmp_path: Path) -> None:
    root = write_synthetic(tmp_path / "raw", "raw", ["webfaq_deu", "banking77"], 12)
    path = root / "banking77.parquet"
    table = pq.read_table(path)
    values = table.column("negative_3").to_pylist()
    values[5] = "  "
    table = table.set_column(table.schema.get_field_index("negative_3"), "negative_3",
                             pa.array(values))
    pq.write_table(table, path)
    with pytest.raises(DataError) as e:
        build_f2llm_v2_corpus(root, tmp_path / "out")
    assert str(e.value) == f"{path}, row 5 (0-based), field 'negative_3': empty string"
    found = build_f2llm_v2_corpus(root, tmp_path / "out", on_bad_record="skip")
    assert found.skip_report.skipped == 1
    assert read_corpus(found.train[0].path).datasets["banking77"].num_rows == 11


def test_a_tokenizer_other_than_the_datas_is_a_clear_error(tmp_path: Path, tokenizer) -> None:
    with pytest.raises(ValueError, match="made with the Qwen3 tokenizer"):
        check_tokenizer(load_tokenizer(word_level_tokenizer(tmp_path / "other")), 151643,
                        150000)
    # The Qwen3 vocabulary but another EOS than the data's.
    with pytest.raises(ValueError, match="appends 151645"):
        check_tokenizer(load_tokenizer(None, "<|im_end|>"), 151643, 150000)
    check_tokenizer(tokenizer, 151643, 150000)


# ---------------------------------------------------------------------------------------------
# Download


def test_download_offline_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match="no network here"):
        build_f2llm_v2_corpus(tmp_path / "dl", tmp_path / "out", download=True,
                              include=["msmarco"])


# ---------------------------------------------------------------------------------------------
# The experiments


@pytest.mark.parametrize("data", ["f2llm_v2", "gettext"])
def test_prune_distill_takes_any_data_group_without_a_stages_override(
        tmp_path: Path, locale_dir: Path, data: str) -> None:
    """`experiment=prune_distill_80m data=f2llm_v2 data.corpus.root=<folder>` (the README line)
    trains stage 2 on every dataset of the folder; the gettext default keeps its three."""
    from hydra.utils import instantiate

    if data == "f2llm_v2":
        root = write_synthetic(tmp_path / "raw", "raw", NAMES, 8)
        overrides, expected = ["data=f2llm_v2", f"data.corpus.root={root}"], set(NAMES)
    else:
        overrides = [f"data.corpus.locale_dir={locale_dir}", "data.corpus.val_min_pairs=4"]
        expected = {"gettext_bitext", "gettext_domains", "gettext_names"}
    cfg = compose_train([*overrides, f"paths.data_dir={tmp_path / 'data'}"],
                        experiment="prune_distill_80m")
    module = instantiate(cfg.data)
    module.setup("fit")
    (stage,) = module.plan.stages.values()
    assert (stage.name, stage.instructions, stage.steps) == ("stage2", True, 2000)
    assert set(stage.datasets) == expected == set(module.plan.datasets)


def test_model_override_leaves_no_hub_name_behind(tmp_path: Path) -> None:
    for experiment in ("f2llm_v2_stage1", "f2llm_v2_stage2"):
        cfg = compose_train([f"experiment={experiment}", f"data.corpus.root={tmp_path}"])
        assert cfg.model.pretrained == "Qwen/Qwen3-0.6B"
        assert (cfg.data.batch_size, cfg.optimizer.lr, cfg.scheduler.warmup_steps) == (
            512, 8e-6, 500)
        assert cfg.model.max_length == 1024
        tiny = compose_train([f"experiment={experiment}", f"data.corpus.root={tmp_path}",
                              "model=tiny"])
        assert tiny.model.pretrained is None and tiny.model.name == "tiny"
        assert not tiny.model.gradient_checkpointing
    assert (CONFIGS / "model" / "qwen3_14b.yaml").exists()


def test_datamodule_serves_stored_ids_and_decodes_them_for_calibration(tmp_path: Path,
                                                                       tokenizer) -> None:
    from hydra.utils import instantiate

    root = write_synthetic(tmp_path / "tok", "tokenized", NAMES, 16, tokenizer=tokenizer)
    cfg = compose_train([f"data.corpus.root={root}", "model=tiny", "trainer=cpu",
                         f"paths.data_dir={tmp_path / 'data'}", "data.batch_size=4",
                         "data.num_workers=0"], experiment="f2llm_v2_stage2")
    encoder = instantiate(cfg.model)
    data = instantiate(cfg.data, encoder=encoder)
    data.setup("fit")
    assert set(data.plan.stages["stage2"].datasets) == set(NAMES)  # the `*` selector
    texts = data.calibration_texts(24)
    assert texts and all(isinstance(t, str) for t in texts)
    assert any(t.startswith("Instruct: ") for t in texts)  # stage-2 queries, decoded
    batch = next(iter(data.train_dataloader()))
    assert batch.batch_size == 4
    ids = [row for chunk in batch.chunks for row in chunk["input_ids"].tolist()]
    assert all(tokenizer.pad_token_id in row for row in ids)  # every text ends with EOS
