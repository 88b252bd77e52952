"""Canonical formats, readers (parquet, JSONL, datasets folder, manifest, corpus file) and the
record checks: every bad input names its file, row and field."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from f2llm.data import readers
from f2llm.data.corpus_io import read_corpus
from f2llm.data.formats import FORMATS, get_format
from f2llm.data.readers import DatasetSpec, read_dataset, write_corpus
from f2llm.data.records import (
    ISO_CODES_DIR,
    DataError,
    SkipReport,
    check_language_code,
)
from f2llm.data.sources.manifest import read_manifest
from tests.conftest import good, records, write_jsonl

LOCALES = Path("/usr/share/locale")


def raises(spec: DatasetSpec, **kwargs: object) -> DataError:
    with pytest.raises(DataError) as info:
        read_dataset(spec, **kwargs)
    return info.value


# --- formats --------------------------------------------------------------------------------


def test_formats_follow_the_spec() -> None:
    assert {n: (f.num_negatives, f.use_inbatch) for n, f in FORMATS.items()} == {
        "retrieval": (7, True), "clustering": (9, False), "classification": (1, False)}
    assert get_format("classification").max_negatives == 1
    assert get_format("retrieval").max_negatives == 24
    with pytest.raises(ValueError, match="valid formats: classification, clustering, retrieval"):
        get_format("clasification")


# --- round trips ----------------------------------------------------------------------------


def test_parquet_public_layout_round_trips(tmp_path: Path) -> None:
    cols = records(5, 24)
    pq.write_table(pa.table(cols), tmp_path / "msmarco.parquet")
    spec = DatasetSpec(tmp_path / "msmarco.parquet", "retrieval", language="en",
                       instruction="Given a query, retrieve passages")
    table = read_dataset(spec)
    assert table.column_names == [*cols, "dataset", "language", "format", "instruction"]
    assert all(t == pa.string() for t in table.schema.types)
    assert table.select(list(cols)).to_pydict() == cols
    assert set(table.column("dataset").to_pylist()) == {"msmarco"}
    assert set(table.column("format").to_pylist()) == {"retrieval"}
    assert set(table.column("instruction").to_pylist()) == {"Given a query, retrieve passages"}


def test_jsonl_round_trips_with_alias_and_language_column(tmp_path: Path) -> None:
    rows = [{"query": f"q{i}", "positive": f"p{i}", "negative_1": f"n{i}", "lang": lang,
             "ignored": 3} for i, lang in enumerate(["pt_BR", "sr@latin", "zh_TW"])]
    path = write_jsonl(tmp_path / "names.jsonl", [rows[0], "", rows[1], rows[2], "  "])
    table = read_dataset(DatasetSpec(path, "classification", language_column="lang"))
    assert table.to_pydict() == {
        "query": ["q0", "q1", "q2"], "passage": ["p0", "p1", "p2"],
        "negative_1": ["n0", "n1", "n2"], "dataset": ["names"] * 3,
        "language": ["pt_BR", "sr@latin", "zh_TW"], "format": ["classification"] * 3,
        "instruction": [None] * 3}


def test_jsonl_records_with_more_negatives_are_cut_to_the_fewest(tmp_path: Path,
                                                                 monkeypatch) -> None:
    monkeypatch.setattr(readers, "CHUNK_ROWS", 2)  # also exercise several chunks
    path = write_jsonl(tmp_path / "r.jsonl", [good(9), good(7), good(8), good(12), good(10)])
    table = read_dataset(DatasetSpec(path, "retrieval", language="de"))
    assert [c for c in table.column_names if c.startswith("negative_")] == [
        f"negative_{j}" for j in range(1, 8)]
    assert table.num_rows == 5


def test_datasets_folder_round_trips(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    cols = {**records(4, 9), "language": ["fr", "fr", "de", "de"], "direction": ["a", "b"] * 2}
    Dataset.from_dict(cols).save_to_disk(str(tmp_path / "clusters"))
    spec = DatasetSpec(tmp_path / "clusters", "clustering", language_column="language",
                       extra_columns=("direction",))
    table = read_dataset(spec)
    assert table.column_names[-5:] == ["dataset", "language", "format", "instruction",
                                       "direction"]
    assert table.select([c for c in cols if c != "language"]).to_pydict() == {
        c: v for c, v in cols.items() if c != "language"}
    assert table.column("language").to_pylist() == cols["language"]

    DatasetDict({"train": Dataset.from_dict(records(2, 9)),
                 "test": Dataset.from_dict(records(1, 9))}).save_to_disk(str(tmp_path / "dd"))
    e = raises(DatasetSpec(tmp_path / "dd", "clustering", language="fr"))
    assert e.field == "split" and "['test', 'train']" in str(e)
    picked = read_dataset(DatasetSpec(tmp_path / "dd", "clustering", language="fr", split="test"))
    assert picked.num_rows == 1


def test_manifest_with_mixed_formats_builds_a_memory_mapped_corpus(tmp_path: Path) -> None:
    from datasets import Dataset

    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table(records(6, 24, "r")), data / "retrieval.parquet")
    write_jsonl(data / "clusters.jsonl",
                [dict(good(9), language=lang) for lang in ["fr", "fr", "ca@valencia"]])
    Dataset.from_dict({**records(3, 1, "c"), "direction": ["x", "y", "z"]}).save_to_disk(
        str(data / "names"))
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        "datasets:\n"
        "  - {path: data/retrieval.parquet, format: retrieval, language: en}\n"
        "  - {path: data/clusters.jsonl, format: clustering, language_column: language,\n"
        "     instruction: Identify the topic}\n"
        "  - {path: data/names, name: names, format: classification, language: 'no',\n"
        "     extra_columns: [direction]}\n")
    specs = read_manifest(manifest)
    assert [(s.name, s.format) for s in specs] == [
        ("retrieval", "retrieval"), ("clusters", "clustering"), ("names", "classification")]

    out = write_corpus(specs, tmp_path / "corpus.arrow")
    before = pa.total_allocated_bytes()
    corpus = read_corpus(out)
    assert pa.total_allocated_bytes() == before  # buffers point into the mapped file
    assert corpus.table.num_rows == 12
    assert corpus.table.column_names[:2] == ["query", "passage"]
    assert corpus.table.column_names[-1] == "direction"
    assert {n: (e.format, e.num_negatives, e.offset, e.num_rows)
            for n, e in corpus.datasets.items()} == {
        "retrieval": ("retrieval", 24, 0, 6), "clusters": ("clustering", 9, 6, 3),
        "names": ("classification", 1, 9, 3)}
    for spec in specs:
        assert corpus.dataset(spec.name).select(read_dataset(spec).column_names).equals(
            read_dataset(spec))
    assert corpus.table.column("negative_2").slice(9).null_count == 3  # padded
    assert corpus.table.column("direction").slice(0, 9).null_count == 9

    stamp = out.stat().st_mtime_ns
    report = SkipReport()
    assert write_corpus(specs, out, report=report) == out
    assert out.stat().st_mtime_ns == stamp  # same inputs and options: reused
    assert report.records == {str(s.path): n for s, n in zip(specs, [6, 3, 3], strict=True)}


# --- one test per bad input -----------------------------------------------------------------


def test_malformed_json_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [good(), '{"query": "q", "passage": ', good()])
    e = raises(DatasetSpec(path, "retrieval", language="en"))
    assert (e.file, e.row, e.row_kind, e.field) == (str(path), 2, "line", None)
    assert str(e).startswith(f"{path}, line 2: malformed JSON")
    path = write_jsonl(tmp_path / "list.jsonl", [good(), "[1, 2]"])
    assert str(raises(DatasetSpec(path, "retrieval", language="en"))) == (
        f"{path}, line 2: not a JSON object: got a JSON array")


def test_missing_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [good(), good(passage=...)])
    e = raises(DatasetSpec(path, "retrieval", language="en"))
    assert str(e) == f"{path}, line 2, field 'passage': missing field: absent or null"

    cols = records(3, 7)
    cols["query"][1] = None
    pq.write_table(pa.table(cols), tmp_path / "m.parquet")
    e = raises(DatasetSpec(tmp_path / "m.parquet", "retrieval", language="en"))
    assert str(e).startswith(f"{tmp_path / 'm.parquet'}, row 1 (0-based), field 'query': "
                             "missing field")
    pq.write_table(pa.table({"query": ["q"], "negative_1": ["n"]}), tmp_path / "nopass.parquet")
    e = raises(DatasetSpec(tmp_path / "nopass.parquet", "classification", language="en"))
    assert (e.row, e.field, e.reason) == (None, "passage", "missing field")


def test_empty_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "foo.jsonl", [good()] * 16 + [good(negative_3=" ")])
    e = raises(DatasetSpec(path, "retrieval", language="en"))
    assert str(e) == f"{path}, line 17, field 'negative_3': empty string"


def test_wrong_type(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [good(), good(), good(query=42)])
    e = raises(DatasetSpec(path, "retrieval", language="en"))
    assert str(e) == (f"{path}, line 3, field 'query': wrong type: got a JSON number, "
                      "expected a string")
    cols = records(2, 1)
    cols["passage"] = [1, 2]
    pq.write_table(pa.table(cols), tmp_path / "t.parquet")
    e = raises(DatasetSpec(tmp_path / "t.parquet", "classification", language="en"),
               on_bad_record="skip")  # a column type concerns every row: always raises
    assert str(e) == (f"{tmp_path / 't.parquet'}, row 0 (0-based), field 'passage': wrong type: "
                      "the column holds int64, expected string")


def test_fewer_negatives_than_the_format_needs(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "few.jsonl", [good(9), good(9), good(4)])
    e = raises(DatasetSpec(path, "clustering", language="en"))
    assert str(e) == (f"{path}, line 3, field 'negative_5': too few negatives: 4 stored, "
                      "clustering needs 9")
    assert read_dataset(DatasetSpec(path, "clustering", language="en"),
                        num_negatives=4).num_rows == 3

    pq.write_table(pa.table(records(2, 3)), tmp_path / "few.parquet")
    e = raises(DatasetSpec(tmp_path / "few.parquet", "retrieval", language="en"))
    assert (e.row, e.field) == (None, "negative_4")
    assert "the file has 3 negative columns, retrieval needs 7" in str(e)

    cols = records(3, 7)
    cols["negative_7"][2] = None
    pq.write_table(pa.table(cols), tmp_path / "null.parquet")
    e = raises(DatasetSpec(tmp_path / "null.parquet", "retrieval", language="en"))
    assert str(e) == (f"{tmp_path / 'null.parquet'}, row 2 (0-based), field 'negative_7': "
                      "too few negatives: 6 stored, retrieval needs 7")


def test_negatives_with_a_gap_or_too_many(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "gap.jsonl", [good(1), good(3, negative_2=None)])
    e = raises(DatasetSpec(path, "retrieval", language="en"), num_negatives=1)
    assert (e.row, e.field, e.reason) == (2, "negative_2", "missing field")
    path = write_jsonl(tmp_path / "two.jsonl", [good(1), good(2)])
    e = raises(DatasetSpec(path, "classification", language="en"))
    assert str(e) == (f"{path}, line 2, field 'negative_2': too many negatives: 2 stored, "
                      "classification takes at most 1")


def test_unknown_format(tmp_path: Path) -> None:
    pq.write_table(pa.table(records(2, 1)), tmp_path / "c.parquet")
    e = raises(DatasetSpec(tmp_path / "c.parquet", "clasification", language="en"))
    assert str(e) == (f"{tmp_path / 'c.parquet'}, field 'format': unknown format: "
                      "'clasification'; valid formats: classification, clustering, retrieval")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([
        {"path": "c.parquet", "format": "classification", "language": "en", "name": "a"},
        {"path": "c.parquet", "format": "clasification", "language": "en", "name": "b"}]))
    with pytest.raises(DataError) as info:
        read_manifest(manifest)
    assert str(info.value).startswith(f"{manifest}, entry 2, field 'format': unknown format")


def test_unknown_language(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "l.jsonl", [good(1, lang="fr"), good(1, lang="English")])
    spec = DatasetSpec(path, "classification", language_column="lang")
    e = raises(spec)
    assert str(e).startswith(f"{path}, line 2, field 'lang': unknown language code 'English'")
    assert "did you mean 'en'?" in str(e) and "extra_languages" in str(e)
    assert read_dataset(spec, extra_languages=["English"]).num_rows == 2

    pq.write_table(pa.table(records(2, 1)), tmp_path / "c.parquet")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("- {path: c.parquet, format: classification, language: xx}\n")
    with pytest.raises(DataError) as info:
        read_manifest(manifest)
    assert str(info.value).startswith(
        f"{manifest}, entry 1, field 'language': unknown language code 'xx'")
    assert read_manifest(manifest, extra_languages={"xx"})[0].language == "xx"
    manifest.write_text("- {path: c.parquet, format: classification, language: no}\n")
    with pytest.raises(DataError, match="quote it"):  # YAML 1.1 reads `no` as false
        read_manifest(manifest)


@pytest.mark.parametrize("code", ["en", "pt_BR", "pt-BR", "sr@latin", "zh_TW", "zh_Hant",
                                  "ca@valencia", "be@latin", "es-419", "eng_Latn", "kmr", "mo"])
def test_accepted_language_codes(code: str) -> None:
    assert check_language_code(code) is None


@pytest.mark.parametrize(("code", "hint"), [("EN", "'en'"), ("pt-br", "'pt-BR'"), ("xx", None),
                                            ("zh_hant", "'zh_Hant'"), ("pt_BR.UTF-8", None)])
def test_rejected_language_codes(code: str, hint: str | None) -> None:
    problem = check_language_code(code)
    assert problem is not None
    assert (f"did you mean {hint}?" in problem) if hint else "did you mean" not in problem


def test_every_gettext_locale_name_is_accepted() -> None:
    if not LOCALES.exists() or not ISO_CODES_DIR.exists():
        pytest.skip("needs /usr/share/locale and the iso-codes package")
    names = [p.name for p in LOCALES.iterdir() if p.is_dir() and p.name != "C"]
    assert {n: check_language_code(n) for n in names if check_language_code(n)} == {}


def test_invalid_utf8(tmp_path: Path) -> None:
    line = b'{"query": "q", "passage": "caf\xe9", "negative_1": "n"}'
    path = write_jsonl(tmp_path / "u.jsonl", [good(1), line])
    e = raises(DatasetSpec(path, "classification", language="fr"))
    assert (e.row, e.field, e.reason) == (2, "passage", "invalid UTF-8")
    assert str(e).startswith(f"{path}, line 2, field 'passage': invalid UTF-8")
    path = write_jsonl(tmp_path / "s.jsonl", [good(1), '{"query": "\\udc80", "passage": "p", '
                                                         '"negative_1": "n"}'])
    e = raises(DatasetSpec(path, "classification", language="fr"))
    assert (e.row, e.field, e.reason) == (2, "query", "invalid UTF-8")

    cols = {"query": pa.array([b"ok", b"ok", b"\xff"], pa.binary()),
            "passage": ["p"] * 3, "negative_1": ["n"] * 3}
    pq.write_table(pa.table(cols), tmp_path / "u.parquet")
    e = raises(DatasetSpec(tmp_path / "u.parquet", "classification", language="fr"))
    assert str(e) == f"{tmp_path / 'u.parquet'}, row 2 (0-based), field 'query': invalid UTF-8"
    report = SkipReport()
    table = read_dataset(DatasetSpec(tmp_path / "u.parquet", "classification", language="fr"),
                         on_bad_record="skip", report=report)
    assert table.column("query").to_pylist() == ["ok", "ok"]
    assert report.counts == {(str(tmp_path / "u.parquet"), "invalid UTF-8"): 1}


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    (tmp_path / "e.parquet").write_bytes(b"")
    pq.write_table(pa.table(records(0, 1)), tmp_path / "rows.parquet")
    for name in ["e.jsonl", "blank.jsonl", "e.parquet", "rows.parquet"]:
        e = raises(DatasetSpec(tmp_path / name, "classification", language="en"),
                   on_bad_record="skip")
        assert (e.file, e.reason) == (str(tmp_path / name), "empty file")


def test_missing_file(tmp_path: Path) -> None:
    e = raises(DatasetSpec(tmp_path / "nope.parquet", "retrieval", language="en"),
               on_bad_record="skip")
    assert str(e) == f"{tmp_path / 'nope.parquet'}: file not found"
    manifest = tmp_path / "m.yaml"
    manifest.write_text("- {path: nope.jsonl, format: retrieval, language: en}\n")
    with pytest.raises(DataError) as info:
        read_manifest(manifest)
    assert (info.value.row, info.value.field, info.value.reason) == (1, "path", "file not found")
    with pytest.raises(DataError, match="file not found"):
        read_manifest(tmp_path / "absent.yaml")


def test_manifest_entry_problems(tmp_path: Path) -> None:
    pq.write_table(pa.table(records(2, 1)), tmp_path / "c.parquet")
    manifest = tmp_path / "m.yaml"
    for body, field in [("- {path: c.parquet, format: retrieval, langauge: en}", "langauge"),
                        ("- {path: c.parquet, language: en}", "format"),
                        ("- {path: c.parquet, format: retrieval}", "language")]:
        manifest.write_text(body + "\n")
        with pytest.raises(DataError) as info:
            read_manifest(manifest)
        assert (info.value.row, info.value.field) == (1, field), str(info.value)


def test_passage_and_its_alias_together(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [good(1, positive="p2")])
    e = raises(DatasetSpec(path, "classification", language="en"))
    assert (e.row, e.field, e.reason) == (1, "positive", "duplicate field")


# --- skip mode ------------------------------------------------------------------------------


def test_skip_counts_every_bad_record_per_file_and_reason(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(readers, "CHUNK_ROWS", 3)
    rows = [good(), good(query=""), "{oops", good(negative_7=None), good(query=1), good(),
            good(lang="xx"), good(passage=None), good(negative_2=""), good(lang="xx"), good()]
    rows = [dict(r, lang=r.get("lang", "fr")) if isinstance(r, dict) else r for r in rows]
    path = write_jsonl(tmp_path / "mix.jsonl", rows)
    report = SkipReport(max_examples=1)
    table = read_dataset(DatasetSpec(path, "retrieval", language_column="lang"),
                         on_bad_record="skip", report=report)
    assert table.num_rows == 3
    f = str(path)
    assert report.counts == {
        (f, "empty string"): 2, (f, "malformed JSON"): 1, (f, "too few negatives"): 1,
        (f, "wrong type"): 1, (f, "unknown language code 'xx'"): 2, (f, "missing field"): 1}
    assert report.examples[(f, "empty string")] == ["line 2, field 'query'"]
    assert report.records == {f: 11} and report.skipped == 8
    assert "skipped 8 of 11 records" in report.summary()
    data = report.to_dict()
    assert data["files"][f]["skipped"]["unknown language code 'xx'"]["count"] == 2
    assert json.loads(json.dumps(data)) == data

    # The same file in raise mode reports the earliest bad line, across chunks and parse errors.
    e = raises(DatasetSpec(path, "retrieval", language_column="lang"))
    assert (e.row, e.field) == (2, "query")


def test_skip_mode_still_raises_when_nothing_is_left(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "all.jsonl", [good(query=""), "nope"])
    e = raises(DatasetSpec(path, "retrieval", language="en"), on_bad_record="skip")
    assert e.reason == "no valid records left" and "all 2 records skipped" in str(e)


def test_error_survives_pickling(tmp_path: Path) -> None:
    e = DataError(tmp_path / "x.jsonl", "empty string", row=3, field="query",
                  row_kind="line")
    copy = pickle.loads(pickle.dumps(e))
    assert (str(copy), copy.row, copy.field) == (str(e), 3, "query")
