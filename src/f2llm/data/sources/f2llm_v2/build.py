"""The public F2LLM-v2 data folder (raw or tokenized layout) -> one memory-mapped corpus.

Layouts (both as in github.com/codefuse-ai/CodeFuse-Embeddings, F2LLM/, commit 1c52915):
- raw: `<name>.parquet` with `query`, `passage`, `negative_1..negative_24` (classification:
  `negative_1`), read into the canonical string table of `readers` and checked record by record
  with `validation.RecordChecker` (file / row / field messages).
- tokenized (`tokenize_data_qwen.py`): `<name>_query.parquet` with `query_input_ids` (token ids,
  EOS appended, at most 2047 + 1) and doc-id references `passage_input_ids`,
  `negative_<i>_input_ids`; `<name>_corpus.parquet` or one `corpus.parquet` with `doc_id`,
  `input_ids`. Token ids are kept, never re-tokenized: `corpus.arrow` holds the query ids and
  the row of each referenced document in `docs.arrow` (documents stay deduplicated).

The build streams parquet batches (bounded memory: one batch of one file at a time, plus one
dataset's doc-id index in the tokenized layout), runs once per output folder under a lock file
(other ranks and runs wait, then reuse it) and is reused while its fingerprint (file names,
sizes, mtimes, recipes, options) is unchanged. Reading a built corpus memory-maps it, and
the record indices of every (dataset, language, direction) group, stored next to it
(`groups.arrow`, `corpus.StoredGroups`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from f2llm.data.corpus import Corpus, StoredGroups, TrainingDataset
from f2llm.data.formats import get_format
from f2llm.data.readers import (
    CORPUS_METADATA_KEY,
    CorpusEntry,
    DatasetSpec,
    _source_columns,
    canonical_schema,
    check_spec,
    read_corpus,
)
from f2llm.data.records import (
    EMPTY_FILE,
    MISSING_FIELD,
    TOO_FEW_NEGATIVES,
    UNREADABLE_FILE,
    WRONG_TYPE,
    DataValidationError,
    RecordChecker,
    SkipReport,
    check_on_bad_record,
)
from f2llm.data.sources.f2llm_v2.recipes import DatasetRecipe, resolve_recipes
from f2llm.paths import private_tmp

log = logging.getLogger(__name__)

REPO_ID = "codefuse-ai/F2LLM-v2"
DOWNLOAD_COMMAND = ("python scripts/f2llm_v2_data.py download --root <folder> "
                    "[--datasets msmarco webfaq_deu ...]")
DANGLING_DOC_ID = "dangling doc id"
BUILD_VERSION = 2
# A per-record language column is used where the name states no language.
LANGUAGE_COLUMNS = ("language", "lang")
# Qwen3's special tokens at these ids (tokenizer_config.json of the Qwen3 models): a tokenizer
# that maps them elsewhere has another vocabulary than the one the data was tokenized with.
QWEN3_SPECIAL_IDS = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>"}
_TOKENIZED_SUFFIX, _CORPUS_SUFFIX = "_query.parquet", "_corpus.parquet"
_CORPUS_FILE = "corpus.parquet"
# Rows per streamed batch. Parquet is read with buffered streams (no pre-buffering of whole
# row groups), so memory is bounded by this, not by a file's row-group size.
BATCH_ROWS = 8192
# Queries starting with this carry their instruction (`Instruct: {task}\nQuery: {text}`).
INSTRUCTED_PREFIX = "Instruct:"


# ---------------------------------------------------------------------------------------------
# The folder


@dataclass(frozen=True)
class Layout:
    """What a folder holds: `kind` raw or tokenized, the record file of each dataset, and (for
    the tokenized layout) each dataset's corpus file or the one shared `corpus.parquet`."""

    kind: str
    files: dict[str, Path]
    corpus_files: dict[str, Path]
    shared_corpus: Path | None = None


def find_layout(root: str | Path, layout: str = "auto") -> Layout:
    """The datasets under `root` (searched recursively), in the raw or tokenized layout."""
    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"data.corpus.root={root}: no such folder. Download the public "
                                f"data where there is a network: {DOWNLOAD_COMMAND}")
    parquet = sorted(folder.rglob("*.parquet"))
    tokenized = {p.name[: -len(_TOKENIZED_SUFFIX)]: p for p in parquet
                 if p.name.endswith(_TOKENIZED_SUFFIX)}
    corpus = {p.name[: -len(_CORPUS_SUFFIX)]: p for p in parquet
              if p.name.endswith(_CORPUS_SUFFIX)}
    shared = [p for p in parquet if p.name == _CORPUS_FILE]
    raw = {p.stem: p for p in parquet if not p.name.endswith((_TOKENIZED_SUFFIX, _CORPUS_SUFFIX))
           and p.name != _CORPUS_FILE}
    if layout not in ("auto", "raw", "tokenized"):
        raise ValueError(f"data.corpus.layout={layout!r}: expected auto, raw or tokenized")
    if layout == "auto":
        if tokenized and raw:
            raise ValueError(f"{folder} holds both layouts ({len(raw)} raw files, "
                             f"{len(tokenized)} *_query.parquet); choose one with "
                             "data.corpus.layout=raw or data.corpus.layout=tokenized")
        layout = "tokenized" if tokenized else "raw"
    if layout == "raw":
        if not raw:
            raise FileNotFoundError(f"no <name>.parquet files under {folder}; download the "
                                    f"public data where there is a network: {DOWNLOAD_COMMAND}")
        return Layout("raw", raw, {})
    if not tokenized:
        raise FileNotFoundError(f"no <name>_query.parquet files under {folder}")
    if len(shared) > 1:
        raise ValueError(f"several corpus.parquet files under {folder}: {shared}")
    missing = [n for n in tokenized if n not in corpus] if not shared else []
    if missing:
        raise FileNotFoundError(f"no {missing[0]}_corpus.parquet (or corpus.parquet) under "
                                f"{folder} for {len(missing)} tokenized dataset(s): {missing}")
    return Layout("tokenized", tokenized, {n: corpus[n] for n in tokenized if n in corpus},
                  shared[0] if shared else None)


def _schema_names(path: Path) -> list[str]:
    if path.stat().st_size == 0:
        raise DataValidationError(path, EMPTY_FILE, "0 bytes")
    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise DataValidationError(path, UNREADABLE_FILE, f"not a parquet file ({e})") from None


def recipes_for(layout: Layout, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                include: Sequence[str] | None = None) -> list[DatasetRecipe]:
    """The folder's datasets (or the `include` subset) with format, language, instruction."""
    names = sorted(layout.files)
    if include:
        absent = [n for n in include if n not in layout.files]
        if absent:
            raise FileNotFoundError(f"data.corpus.include names datasets not in the folder: "
                                    f"{absent}")
        names = [n for n in names if n in set(include)]
    columns = {}
    for name in names:
        have = _schema_names(layout.files[name])
        found = [c for c in LANGUAGE_COLUMNS if c in have]
        if found:
            columns[name] = found[0]
    return resolve_recipes(names, overrides, columns)


def dataset_rows(layout: Layout, recipe: DatasetRecipe) -> dict[tuple[str, str], int]:
    """Records per (language, direction) group, from parquet footers (and the language column
    where the dataset has one): what a dry run shows without building anything."""
    path = layout.files[recipe.name]
    direction = recipe.direction or ""
    if recipe.language_column is None:
        return {(recipe.language, direction): pq.ParquetFile(path).metadata.num_rows}
    counts = pq.read_table(path, columns=[recipe.language_column]).column(0).value_counts()
    return {(str(v["values"]), direction): int(v["counts"]) for v in counts.to_pylist()}


# ---------------------------------------------------------------------------------------------
# Download


def download_f2llm_v2(root: str | Path, datasets: Sequence[str] | None = None,
                      repo_id: str = REPO_ID, layout: str = "raw", revision: str | None = None
                      ) -> Path:
    """`huggingface_hub.snapshot_download` of the public data (or the files of `datasets`)
    into `root`: resumable, with a progress bar. Offline it fails at once naming the command
    to run where there is a network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = None
    if datasets:
        suffixes = [".parquet"] if layout == "raw" else [_TOKENIZED_SUFFIX, _CORPUS_SUFFIX]
        # At the top or in any folder of the repository (fnmatch: `*` crosses `/`).
        files = [f"{name}{s}" for name in datasets for s in suffixes]
        if layout == "tokenized":
            files.append(_CORPUS_FILE)
        patterns = [p for f in files for p in (f, f"*/{f}")]
    from f2llm.model.hub import _hub_reachable, _offline

    hint = (f"no network here (HF_HUB_OFFLINE is set or the hub is unreachable): download "
            f"{repo_id} where there is one, `{DOWNLOAD_COMMAND}`, then copy the folder here "
            f"and train with data.corpus.root=<folder>")
    # Checked first: without a network the hub client would retry for minutes.
    if _offline() or not _hub_reachable():
        raise ConnectionError(hint)
    try:
        path = snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision,
                                 allow_patterns=patterns, local_dir=str(root))
    except (LocalEntryNotFoundError, OSError) as e:
        raise ConnectionError(f"{hint} ({type(e).__name__}: {e})") from None
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Build


@dataclass
class F2LLMV2Corpus(Corpus):
    """A `Corpus` with each training dataset's recipe (format, language, direction, instruction)
    as resolved from its name."""

    recipes: list[DatasetRecipe] = field(default_factory=list)


def build_f2llm_v2_corpus(
    root: str | Path,
    out_dir: str | Path,
    layout: str = "auto",
    datasets: Mapping[str, Mapping[str, Any]] | None = None,
    include: Sequence[str] | None = None,
    num_negatives: Mapping[str, int] | None = None,
    on_bad_record: str = "raise",
    download: bool = False,
    repo_id: str = REPO_ID,
    extra_languages: Collection[str] = (),
) -> F2LLMV2Corpus:
    """The datamodule's `Corpus` for the public data under `root`.

    `datasets` assigns format / language / language_column / direction / instruction by hand
    (names on no official list need a format); `include` restricts to some datasets;
    `download: true` fetches `include` (or everything) first. The corpus is built once into
    a subfolder of `out_dir` named after the source folder (a lock file makes concurrent ranks
    and runs wait) and reused by fingerprint.
    """
    if download:
        download_f2llm_v2(root, include, repo_id, "raw" if layout == "auto" else layout)
    found = find_layout(root, layout)
    recipes = recipes_for(found, datasets, include)
    mode = check_on_bad_record(on_bad_record)
    # One folder per source folder and layout: switching between copies rebuilds nothing.
    key = hashlib.sha256(f"{Path(root).resolve()}|{found.kind}".encode()).hexdigest()[:12]
    out = Path(out_dir) / f"{Path(root).resolve().name}-{found.kind}-{key}"
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(found, recipes, num_negatives, mode, extra_languages)
    corpus_path = out / "corpus.arrow"
    report = SkipReport()
    with _build_lock(out / ".build.lock"):
        meta = _corpus_metadata(corpus_path)
        if meta is not None and meta.get("fingerprint") == fingerprint:
            log.info("reusing the F2LLM-v2 corpus %s (%d records)", corpus_path,
                     sum(e["num_rows"] for e in meta["datasets"]))
        else:
            start = time.perf_counter()
            build = SkipReport()
            if found.kind == "raw":
                meta = _build_raw(found, recipes, corpus_path, num_negatives, mode, build,
                                  extra_languages, fingerprint)
            else:
                meta = _build_tokenized(found, recipes, out, num_negatives, mode, build,
                                        fingerprint)
            log.info("built the F2LLM-v2 corpus %s: %d records of %d datasets in %.1f s",
                     corpus_path, sum(e["num_rows"] for e in meta["datasets"]),
                     len(meta["datasets"]), time.perf_counter() - start)
        report.update(meta["report"])
        # Each group's record indices, written once next to the corpus (covered by its
        # fingerprint) and memory-mapped by every run: startup does no per-record work.
        groups = StoredGroups(out / "groups.arrow")
        if groups.fingerprint() != fingerprint:
            records = read_corpus(corpus_path)
            groups = StoredGroups.write(groups.path, ((e["name"], records.dataset(e["name"]))
                                                      for e in meta["datasets"]), fingerprint)
    (out / "skip_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    recipe_of = {r.name: r for r in recipes}
    train = [TrainingDataset(e["name"], corpus_path, e["format"], e["instruction"])
             for e in meta["datasets"]]
    pretokenized = None
    if found.kind == "tokenized":
        pretokenized = PretokenizedDocs(
            out / meta["docs"], meta["eos_id"], meta["max_token_id"],
            [e["name"] for e in meta["datasets"]],
            sorted({e["instruction"] for e in meta["datasets"] if e["instruction"]}))
    return F2LLMV2Corpus(train, skip_report=report, pretokenized=pretokenized, groups=groups,
                         recipes=[recipe_of[e["name"]] for e in meta["datasets"]])


@contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """One builder per output folder: an exclusive `flock` (other ranks and runs block here,
    then find the finished corpus by its fingerprint)."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fingerprint(layout: Layout, recipes: Sequence[DatasetRecipe], num_negatives: Any,
                 mode: str, extra_languages: Collection[str]) -> str:
    files = [*layout.files.values(), *layout.corpus_files.values(),
             *([layout.shared_corpus] if layout.shared_corpus else [])]
    data = {
        "version": BUILD_VERSION, "kind": layout.kind,
        "files": sorted([str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns]
                        for f in files),
        "recipes": [asdict(r) for r in recipes],
        "num_negatives": dict(sorted((num_negatives or {}).items())),
        "on_bad_record": mode, "extra_languages": sorted(extra_languages),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _corpus_metadata(path: Path) -> dict[str, Any] | None:
    try:
        schema = pa.ipc.open_file(pa.memory_map(str(path), "r")).schema
        return json.loads(schema.metadata[CORPUS_METADATA_KEY])
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError):
        return None


def _constant(value: str | None, n: int) -> pa.Array:
    if value is None:
        return pa.nulls(n, pa.string())
    return pa.repeat(pa.scalar(value, pa.string()), n)


class _CorpusWriter:
    """Writes record batches to one Arrow IPC file whose schema metadata lists the datasets.

    The metadata must be known when the file is opened. Rows and negatives per dataset are
    predicted from the parquet footers; where the data turns out otherwise (skipped records,
    rows storing fewer negatives) the finished file is rewritten once with the true entries.
    A batch is written in a background thread while the caller prepares the next (Arrow's IPC
    write releases the GIL); one write at a time, so at most one batch waits in memory.
    """

    def __init__(self, path: Path, schema: pa.Schema, predicted: list[CorpusEntry],
                 meta: dict[str, Any]) -> None:
        self.path, self.schema, self.predicted, self.meta = path, schema, predicted, meta
        self.tmp = private_tmp(path)
        self.sink = pa.OSFile(str(self.tmp), "wb")
        self.writer = pa.ipc.new_file(self.sink, self._with_entries(predicted))
        self.actual: list[CorpusEntry] = []
        self.rows = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="corpus-write")
        self._pending: Future[None] | None = None

    def _with_entries(self, entries: Sequence[CorpusEntry]) -> pa.Schema:
        meta = {**self.meta, "datasets": [asdict(e) for e in entries]}
        return self.schema.with_metadata({CORPUS_METADATA_KEY: json.dumps(meta)})

    def write(self, batch: pa.RecordBatch) -> None:
        self._wait()  # the previous batch's write (and its error, if it failed)
        self._pending = self._pool.submit(self.writer.write_batch, batch)
        self.rows += batch.num_rows

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def finish(self, entries: list[CorpusEntry], report: SkipReport) -> dict[str, Any]:
        self.meta["report"] = report.to_dict()
        self._wait()
        self._pool.shutdown()
        self.writer.close()
        self.sink.close()
        if entries != self.predicted or report.skipped:
            log.info("rewriting %s with the rows and negatives found", self.path)
            final = private_tmp(self.path, ".final")
            reader = pa.ipc.open_file(pa.memory_map(str(self.tmp), "r"))
            with pa.OSFile(str(final), "wb") as sink, \
                    pa.ipc.new_file(sink, self._with_entries(entries)) as writer:
                for i in range(reader.num_record_batches):
                    writer.write_batch(reader.get_batch(i))
            self.tmp.unlink()
            self.tmp = final
        self.tmp.replace(self.path)
        return {**self.meta, "datasets": [asdict(e) for e in entries]}

    def abort(self) -> None:
        with suppress(Exception):
            self._wait()
        self._pool.shutdown()
        for closable in (self.writer, self.sink):
            with suppress(pa.ArrowException, OSError):
                closable.close()
        self.tmp.unlink(missing_ok=True)


def _negative_count(names: Sequence[str], suffix: str = "") -> int:
    count = 0
    while f"negative_{count + 1}{suffix}" in names:
        count += 1
    return count


def _build_raw(layout: Layout, recipes: Sequence[DatasetRecipe], path: Path,
               num_negatives: Mapping[str, int] | None, mode: str, report: SkipReport,
               extra_languages: Collection[str], fingerprint: str) -> dict[str, Any]:
    # `code:<lang>` labels group code datasets; they are not natural-language codes.
    extra_languages = {*extra_languages, *(r.language for r in recipes
                                           if r.language and r.language.startswith("code:"))}
    plans = []
    for r in recipes:
        spec = DatasetSpec(layout.files[r.name], r.format, r.name, r.language, r.language_column,
                           r.instruction)
        fmt = check_spec(spec, extra_languages)
        need = (num_negatives or {}).get(fmt.name, fmt.num_negatives)
        names = _schema_names(spec.path)
        columns = _source_columns(names, spec, fmt, need)  # file-level column checks
        k = min(_negative_count(names), fmt.max_negatives)
        columns = {c: s for c, s in columns.items()
                   if not (c.startswith("negative_") and int(c.split("_")[1]) > k)}
        plans.append((r, spec, fmt, need, columns, k, pq.ParquetFile(spec.path).metadata.num_rows))
    width = max(k for *_, k, _ in plans)
    schema = canonical_schema(width, ["direction"])
    predicted, offset = [], 0
    for r, spec, fmt, _, _, k, rows in plans:
        predicted.append(CorpusEntry(r.name, fmt.name, k, offset, rows, str(spec.path),
                                     r.instruction))
        offset += rows
    meta = {"version": BUILD_VERSION, "fingerprint": fingerprint, "layout": "raw",
            "report": SkipReport().to_dict()}
    writer = _CorpusWriter(path, schema, predicted, meta)
    entries, offset = [], 0
    try:
        for r, spec, fmt, need, columns, _, _ in plans:
            checker = RecordChecker(spec.path, fmt, need, mode, report, "row",
                                    spec.language_column, (), extra_languages,
                                    {c: s for c, s in columns.items() if c != s})
            kept, fewest, row, instructed = 0, None, 0, True
            for batch in _batches(spec.path, list(columns.values())):
                table = pa.Table.from_batches([batch]).rename_columns(list(columns))
                rows = np.arange(row, row + batch.num_rows)
                row += batch.num_rows
                good, least = checker.check(table, rows)
                if good.num_rows == 0:
                    continue
                fewest = least if fewest is None else min(fewest, least)
                kept += good.num_rows
                instructed = instructed and pc.all(pc.starts_with(
                    good.column("query"), INSTRUCTED_PREFIX)).as_py()
                writer.write(_raw_batch(good, r, fmt.name, schema))
            if row == 0:
                raise DataValidationError(spec.path, EMPTY_FILE, "no records")
            if kept == 0:
                raise DataValidationError(spec.path, "no records left", f"all {row} records "
                                          "skipped (see the skip report)")
            # Queries that carry their instruction already (as in the F2LLM v1 data) get none.
            entries.append(CorpusEntry(r.name, fmt.name, fewest, offset, kept, str(spec.path),
                                       None if instructed else r.instruction))
            offset += kept
        return writer.finish(entries, report)
    except BaseException:
        writer.abort()
        raise


def _parquet(path: Path) -> pq.ParquetFile:
    return pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)


_DONE = object()


def _batches(path: Path, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The file's record batches (`BATCH_ROWS` rows), the next one read in a background thread
    while the caller checks and writes this one: Arrow's parquet decoding releases the GIL, so
    reading overlaps the rest of the build. One batch ahead: memory stays bounded."""
    reader = _parquet(path).iter_batches(batch_size=BATCH_ROWS, columns=list(columns))
    with ThreadPoolExecutor(1, thread_name_prefix="parquet-ahead") as pool:
        ahead = pool.submit(next, reader, _DONE)
        while (batch := ahead.result()) is not _DONE:
            ahead = pool.submit(next, reader, _DONE)
            yield batch


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    # A batch's column is one chunk: take it as is (combine_chunks would copy it).
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _raw_batch(table: pa.Table, recipe: DatasetRecipe, fmt: str, schema: pa.Schema
               ) -> pa.RecordBatch:
    n = table.num_rows
    language = (_one_chunk(table.column(recipe.language_column)) if recipe.language_column
                else _constant(recipe.language, n))
    arrays = []
    for name in schema.names:
        if name in ("query", "passage") or name.startswith("negative_"):
            arrays.append(_one_chunk(table.column(name)) if name in table.column_names
                          else pa.nulls(n, pa.string()))
        else:
            value = {"dataset": recipe.name, "format": fmt, "instruction": recipe.instruction,
                     "direction": recipe.direction}
            arrays.append(language if name == "language" else _constant(value[name], n))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# ---------------------------------------------------------------------------------------------
# Tokenized layout


def _tokenized_schema(width: int) -> pa.Schema:
    fields = [pa.field("query", pa.list_(pa.int32())), pa.field("passage", pa.int64()),
              *(pa.field(f"negative_{j}", pa.int64()) for j in range(1, width + 1))]
    fields += [pa.field(n, pa.string()) for n in ("dataset", "language", "format",
                                                  "instruction", "direction")]
    return pa.schema(fields)


_DOCS_SCHEMA = pa.schema([pa.field("doc_id", pa.string()),
                          pa.field("input_ids", pa.list_(pa.int32()))])


def _id_lists(column: pa.Array, path: Path, field: str, first_row: int) -> pa.Array:
    """Token-id lists as list<int32>; a wrong type is a file-level error naming the field."""
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)) or \
            not pa.types.is_integer(column.type.value_type):
        raise DataValidationError(path, WRONG_TYPE, f"the column holds {column.type}, expected "
                                  "a list of token ids", first_row, field)
    return column.cast(pa.list_(pa.int32()))


def _empty_ids(ids: pa.Array) -> np.ndarray:
    """Mask of records whose id list is null or empty."""
    lengths = pc.list_value_length(ids).fill_null(0).to_numpy(zero_copy_only=False)
    return lengths == 0


def _build_tokenized(layout: Layout, recipes: Sequence[DatasetRecipe], out: Path,
                     num_negatives: Mapping[str, int] | None, mode: str, report: SkipReport,
                     fingerprint: str) -> dict[str, Any]:
    docs_path = out / "docs.arrow"
    ranges, eos, max_id = _write_docs(layout, recipes, docs_path)
    plans = []
    for r in recipes:
        path = layout.files[r.name]
        fmt = get_format(r.format)
        need = (num_negatives or {}).get(fmt.name, fmt.num_negatives)
        names = _schema_names(path)
        for c in ("query_input_ids", "passage_input_ids"):
            if c not in names:
                raise DataValidationError(path, MISSING_FIELD, "no such column", field=c)
        k = min(_negative_count(names, "_input_ids"), fmt.max_negatives)
        if k < need:
            raise DataValidationError(path, TOO_FEW_NEGATIVES, f"the file has {k} negative "
                                      f"columns, {fmt.name} needs {need}",
                                      field=f"negative_{k + 1}_input_ids")
        if r.language_column is not None and r.language_column not in names:
            raise DataValidationError(path, MISSING_FIELD, "no such column",
                                      field=r.language_column)
        plans.append((r, path, fmt, need, k, pq.ParquetFile(path).metadata.num_rows))
    width = max(p[4] for p in plans)
    schema = _tokenized_schema(width)
    predicted, offset = [], 0
    for r, path, fmt, _, k, rows in plans:
        predicted.append(CorpusEntry(r.name, fmt.name, k, offset, rows, str(path), r.instruction))
        offset += rows
    meta = {"version": BUILD_VERSION, "fingerprint": fingerprint, "layout": "tokenized",
            "docs": docs_path.name, "eos_id": eos, "max_token_id": max_id,
            "report": SkipReport().to_dict()}
    writer = _CorpusWriter(out / "corpus.arrow", schema, predicted, meta)
    entries, offset = [], 0
    try:
        for r, path, fmt, need, k, _ in plans:
            start, stop = ranges.get(r.name, (0, 0))
            corpus_file = layout.corpus_files.get(r.name, layout.shared_corpus)
            value_set = _dataset_doc_ids(docs_path, start, stop)
            refs = ["passage_input_ids", *(f"negative_{j}_input_ids" for j in range(1, k + 1))]
            columns = ["query_input_ids", *refs,
                       *([r.language_column] if r.language_column else [])]
            kept, row, fewest = 0, 0, k
            for batch in _batches(path, columns):
                n = batch.num_rows
                rows = np.arange(row, row + n)
                row += n
                query = _id_lists(batch.column("query_input_ids"), path, "query_input_ids",
                                  row - n)
                # Every reference of the batch resolved by one hash lookup (C++), as a
                # (k + 1, n) matrix of rows in docs.arrow: -1 where absent or dangling.
                where, absent = _doc_rows(batch, refs, value_set, path, row - n)
                bad, count = _check_records(batch, query, refs, where, absent, fmt.name, need,
                                            corpus_file, path, rows, mode, report)
                report.add_records(str(path), n)
                keep = ~bad
                m = int(keep.sum())
                if m == 0:
                    continue
                fewest = min(fewest, int(count[keep].min()))
                language = (batch.column(r.language_column).cast(pa.string())
                            if r.language_column else _constant(r.language, n))
                if m < n:
                    mask = pa.array(keep)
                    query, language = query.filter(mask), language.filter(mask)
                    where = where[:, keep]
                resolved = [pa.array(where[j].astype(np.int64) + start, mask=where[j] < 0)
                            for j in range(k + 1)]
                arrays = [query, *resolved, *(pa.nulls(m, pa.int64()) for _ in range(width - k))]
                arrays += [_constant(r.name, m), language, _constant(fmt.name, m),
                           _constant(r.instruction, m), _constant(r.direction, m)]
                writer.write(pa.RecordBatch.from_arrays(arrays, schema=schema))
                kept += m
            if row == 0:
                raise DataValidationError(path, EMPTY_FILE, "no records")
            if kept == 0:
                raise DataValidationError(path, "no records left", f"all {row} records skipped "
                                          "(see the skip report)")
            entries.append(CorpusEntry(r.name, fmt.name, fewest, offset, kept, str(path),
                                       r.instruction))
            offset += kept
        return writer.finish(entries, report)
    except BaseException:
        writer.abort()
        raise


def _check_records(batch: pa.RecordBatch, query: pa.Array, refs: Sequence[str], where: np.ndarray,
                   absent: np.ndarray, fmt: str, need: int, corpus_file: Path, path: Path,
                   rows: np.ndarray, mode: str, report: SkipReport
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(mask of bad records, leading stored negatives per record) of one tokenized batch.

    Every check is a whole-batch mask; a row is located only when its check fails: `raise`
    names the first bad row's file, row and field, `skip` counts each bad row once."""
    dangling = (where < 0) & ~absent
    stored = ~absent[1:]  # null negatives are absent: rows may store fewer
    # Leading stored negatives: the first absent one's position, or all of them.
    count = np.where(absent[1:].any(axis=0), absent[1:].argmax(axis=0), len(refs) - 1)

    def negative(i: int) -> str:
        return f"negative_{count[i] + 1}_input_ids"

    problems = [  # (mask, reason, field of row i, detail of row i)
        (_empty_ids(query), MISSING_FIELD, lambda _: "query_input_ids",
         lambda _: "null or no token ids"),
        (absent[0], MISSING_FIELD, lambda _: refs[0], lambda _: "absent or null"),
        *((dangling[j], DANGLING_DOC_ID, lambda _, f=ref: f,
           lambda i, f=ref: f"{batch.column(f)[i].as_py()!r} is not a doc_id of {corpus_file}")
          for j, ref in enumerate(refs)),
        (stored.sum(axis=0) > count, MISSING_FIELD, negative,
         lambda _: "a later negative is present; negatives are numbered without gaps"),
        (count < need, TOO_FEW_NEGATIVES, negative,
         lambda i: f"{count[i]} stored, {fmt} needs {need}"),
    ]
    bad = np.zeros(len(rows), dtype=bool)
    for mask, reason, field_of, detail in problems:
        if not mask.any():
            continue
        if mode == "raise":
            i = int(np.argmax(mask))
            raise DataValidationError(path, reason, detail(i), int(rows[i]), field_of(i))
        new = mask & ~bad
        if new.any():
            examples = [f"row {int(rows[i])}, field {field_of(i)!r}"
                        for i in np.flatnonzero(new)[: report.max_examples]]
            report.add(str(path), reason, int(new.sum()), examples)
        bad |= mask
    return bad, count


def _doc_rows(batch: pa.RecordBatch, refs: Sequence[str], value_set: pa.Array, path: Path,
              first_row: int) -> tuple[np.ndarray, np.ndarray]:
    """(row within `value_set` of each doc id of the `refs` columns, -1 where absent or not
    found; mask of absent ids), both of shape (len(refs), rows).

    All columns go through one `index_in` call: Arrow hashes `value_set` once per call, which
    dominated when it ran per column (25 per batch)."""
    columns = []  # looked up as one chunked array: one hash table per batch, no concatenation
    for ref in refs:
        column = batch.column(ref)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
                or pa.types.is_integer(column.type)):
            raise DataValidationError(path, WRONG_TYPE, f"the column holds {column.type}, "
                                      "expected doc ids", first_row, ref)
        columns.append(column.cast(pa.string()))
    ids = pa.chunked_array(columns, pa.string())
    absent = ids.is_null().to_numpy()
    found = pc.fill_null(pc.index_in(ids, value_set=value_set), -1).to_numpy()
    shape = (len(refs), batch.num_rows)
    return found.reshape(shape), absent.reshape(shape)


def _dataset_doc_ids(docs_path: Path, start: int, stop: int) -> pa.Array:
    """A copy of the doc ids in rows [start, stop) of `docs.arrow` (hashed by Arrow, never Python
    objects). The file is mapped for this alone: pages of other datasets' ids do not pile up
    in the build's resident memory."""
    with pa.memory_map(str(docs_path), "r") as source:
        ids = pa.ipc.open_file(source).read_all().column("doc_id").slice(start, stop - start)
        return pa.concat_arrays(ids.chunks) if ids.num_chunks else pa.array([], pa.string())


def _write_docs(layout: Layout, recipes: Sequence[DatasetRecipe], path: Path
                ) -> tuple[dict[str, tuple[int, int]], int, int]:
    """Stream the corpus parquet file(s) into `docs.arrow`; return each dataset's row range,
    the EOS id every document ends with, and the largest token id."""
    wanted = {r.name for r in recipes}
    sources = ([(n, layout.corpus_files[n]) for n in sorted(wanted)]
               if layout.shared_corpus is None else [(None, layout.shared_corpus)])
    ranges: dict[str, tuple[int, int]] = {}
    last_ids: set[int] = set()
    max_id, offset = -1, 0
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, _DOCS_SCHEMA) as writer:
        for name, file in sources:
            names = _schema_names(file)
            for c in ("doc_id", "input_ids"):
                if c not in names:
                    raise DataValidationError(file, MISSING_FIELD, "no such column", field=c)
            row = 0
            for batch in _batches(file, ["doc_id", "input_ids"]):
                n = batch.num_rows
                ids = _id_lists(batch.column("input_ids"), file, "input_ids", row)
                empty = pc.list_value_length(ids).fill_null(0).to_numpy(zero_copy_only=False) == 0
                if empty.any():
                    raise DataValidationError(file, MISSING_FIELD, "null or no token ids",
                                              row + int(np.argmax(empty)), "input_ids")
                doc_id = batch.column("doc_id").cast(pa.string())
                if doc_id.null_count:
                    raise DataValidationError(file, MISSING_FIELD, "absent or null",
                                              row + int(np.argmax(doc_id.is_null().to_numpy(
                                                  zero_copy_only=False))), "doc_id")
                max_id = max(max_id, int(pc.max(ids.flatten()).as_py()))
                last_ids.update(pc.unique(_last_ids(ids)).to_pylist())
                if name is None:  # the shared corpus.parquet: ranges by doc-id prefix
                    _add_prefix_ranges(ranges, doc_id, offset)
                writer.write_batch(pa.RecordBatch.from_arrays([doc_id, ids], schema=_DOCS_SCHEMA))
                row += n
                offset += n
            if name is not None:
                ranges[name] = (offset - row, offset)
    tmp.replace(path)
    if len(last_ids) != 1:
        raise DataValidationError(sources[0][1], "inconsistent EOS", f"documents end with "
                                  f"several ids {sorted(last_ids)[:5]}; the tokenized layout "
                                  "appends one EOS id to every text", field="input_ids")
    return ranges, int(last_ids.pop()), max_id


def _last_ids(ids: pa.ListArray) -> pa.Array:
    """The last token id of each (non-empty) list, vectorised over the list offsets."""
    offsets = ids.offsets.to_numpy()
    values = ids.values
    if ids.offset or len(values) != offsets[-1] - offsets[0]:
        values = values.slice(offsets[0], offsets[-1] - offsets[0])
        offsets = offsets - offsets[0]
    return pc.take(values, pa.array(offsets[1:] - 1))


def _add_prefix_ranges(ranges: dict[str, tuple[int, int]], doc_id: pa.Array, offset: int
                       ) -> None:
    """Extend `ranges` with the row range of each dataset prefix of `<dataset>_<i>` doc ids (the
    official naming); a dataset must be contiguous in corpus.parquet."""
    prefix = pc.replace_substring_regex(doc_id, r"_[0-9]+$", "")
    encoded = prefix.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    names = encoded.dictionary.to_pylist()
    change = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [len(codes)]])
    for s, e in zip(starts.tolist(), stops.tolist(), strict=True):
        name = names[codes[s]]
        if name in ranges:
            first, last = ranges[name]
            if last != offset + s:
                raise ValueError(f"corpus.parquet: the documents of {name!r} are not "
                                 "contiguous (rows "
                                 f"{first}..{last - 1} and from {offset + s}); write one "
                                 f"{name}_corpus.parquet per dataset instead")
            ranges[name] = (first, offset + e)
        else:
            ranges[name] = (offset + s, offset + e)


class PretokenizedDocs:
    """Token ids of the tokenized layout: query ids in `corpus.arrow`, documents in `docs.arrow`
    (memory-mapped, opened lazily so that data-loader workers each map it themselves)."""

    def __init__(self, docs_path: str | Path, eos_id: int, max_token_id: int,
                 datasets: Sequence[str], instructions: Sequence[str] = ()) -> None:
        self.docs_path, self.eos_id, self.max_token_id = Path(docs_path), eos_id, max_token_id
        self.datasets = frozenset(datasets)
        self.instructions = list(instructions)
        self._docs: pa.ChunkedArray | None = None
        # Token ids of each instruction's query prefix, and of "Instruct:" (set by `bind`).
        self.prefixes: dict[str, list[int]] = {}
        self.marker: list[int] = []
        self.max_length = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_docs": None}

    def bind(self, tokenizer: Any, max_length: int, query_prompt: Any) -> None:
        """Check `tokenizer` is the one the ids were made with, and keep what batches need
        (plain data, so data-loader workers get a copy): the max length and the prefix ids of
        every instruction, `query_prompt(instruction)` tokenized alone."""
        check_tokenizer(tokenizer, self.eos_id, self.max_token_id)
        self.max_length = max_length
        self.marker = tokenizer(INSTRUCTED_PREFIX, add_special_tokens=False)["input_ids"]
        self.prefixes = {i: tokenizer(query_prompt(i), add_special_tokens=False)["input_ids"]
                         for i in self.instructions}

    @property
    def docs(self) -> pa.ChunkedArray:
        if self._docs is None:
            table = pa.ipc.open_file(pa.memory_map(str(self.docs_path), "r")).read_all()
            self._docs = table.column("input_ids")
        return self._docs

    def token_ids(self, table: pa.Table, indices: np.ndarray, negative_columns: Sequence[str],
                  instruction: str | None) -> list[list[int]]:
        """Queries, passages, then negatives column by column (the order of `TrainBatches`),
        each cut to the max length with EOS kept last. An instruction is tokenized alone and
        put before the query ids (BPE merges across the join are lost: the space after
        "Query:" stays its own token), unless the query already starts with "Instruct:"."""
        from f2llm.data.datamodule import take_rows

        rows = take_rows(table, indices, ["query", "passage", *negative_columns])
        queries = rows["query"]
        if instruction:
            prefix, marker = self.prefixes[instruction], self.marker
            queries = [q if q[: len(marker)] == marker else prefix + q for q in queries]
        doc_rows = np.asarray([r for c in ["passage", *negative_columns] for r in rows[c]],
                              dtype=np.int64)
        docs = take_rows(pa.table({"input_ids": self.docs}), doc_rows, ["input_ids"])
        return [self._cut(ids) for ids in queries + docs["input_ids"]]

    def texts(self, table: pa.Table, indices: np.ndarray, tokenizer: Any) -> dict[str, list[str]]:
        """Queries and passages of some records decoded to text (pruning calibration)."""
        ids = self.token_ids(table, indices, [], None)
        decoded = tokenizer.batch_decode(ids, skip_special_tokens=True)
        return {"query": decoded[: len(indices)], "passage": decoded[len(indices):]}

    def _cut(self, ids: list[int]) -> list[int]:
        # As the official collate (_stack in F2LLM/run.py): cut, then make the last id EOS.
        if len(ids) > self.max_length:
            ids = ids[: self.max_length]
        if ids[-1] != self.eos_id:
            ids = [*ids[:-1], self.eos_id]
        return ids


def check_tokenizer(tokenizer: Any, eos_id: int, max_token_id: int) -> None:
    """The model's tokenizer must be the Qwen3 vocabulary and append the data's EOS id."""
    vocab = len(tokenizer)
    problems = []
    for token_id, token in QWEN3_SPECIAL_IDS.items():
        found = tokenizer.convert_ids_to_tokens(token_id) if token_id < vocab else None
        if found != token:
            problems.append(f"id {token_id} is {found!r}, Qwen3's is {token!r}")
    if max_token_id >= vocab:
        problems.append(f"the data uses token id {max_token_id}, the tokenizer has {vocab}")
    if problems:
        raise ValueError("the tokenized F2LLM-v2 data was made with the Qwen3 tokenizer; the "
                         "model's tokenizer is another (" + "; ".join(problems) + "). Use a "
                         "Qwen3 model/tokenizer (model.tokenizer=null gives the bundled Qwen3 "
                         "files) or the raw layout (data.corpus.layout=raw).")
    appended = tokenizer("a")["input_ids"][-1]
    if appended != eos_id:
        raise ValueError(f"the tokenized F2LLM-v2 data ends every text with id {eos_id} "
                         f"({tokenizer.convert_ids_to_tokens(eos_id)!r}); the model's tokenizer "
                         f"appends {appended} ({tokenizer.convert_ids_to_tokens(appended)!r}). "
                         f"Set +model.eos_token='{tokenizer.convert_ids_to_tokens(eos_id)}' so "
                         "that training and inference end texts alike.")
