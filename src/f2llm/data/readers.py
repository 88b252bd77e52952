"""Readers of training data into the canonical table, and `write_corpus`: datasets -> one
corpus file (`corpus_io`), the file the datamodule maps.

The canonical table (pyarrow, string columns, one row per record):

    query, passage, negative_1 .. negative_k, dataset, language, format, instruction[, extras]

`k` is the number of hard negatives every record of the dataset stores (at least what the format
needs, at most 24; the negatives of records with more are cut to k). `instruction` is null when
the dataset has none. Sources: the public F2LLM-v2 layout (one parquet per dataset), JSONL with
the same field names, and a local Hugging Face `datasets` folder (`save_to_disk`). In every
source `positive` is accepted as an alias of `passage` (the sentence-transformers name); a
record or file with both is an error. Other fields are ignored unless named in `extra_columns`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from f2llm.data.corpus_io import (
    NEGATIVE_COLUMN,
    CorpusEntry,
    constant_column,
    corpus_metadata,
    fingerprint,
    ipc_batches,
    with_corpus_metadata,
    write_ipc,
)
from f2llm.data.formats import FORMATS, Format, get_format
from f2llm.data.records import (
    DUPLICATE_FIELD,
    EMPTY_FILE,
    FILE_NOT_FOUND,
    INVALID_ENTRY,
    INVALID_UTF8,
    MALFORMED_JSON,
    MISSING_FIELD,
    NO_RECORDS_LEFT,
    NOT_AN_OBJECT,
    TOO_FEW_NEGATIVES,
    UNKNOWN_FORMAT,
    UNKNOWN_LANGUAGE,
    UNREADABLE_FILE,
    WRONG_TYPE,
    DataError,
    OnBadRecord,
    RecordChecker,
    SkipReport,
    check_language_code,
    check_on_bad_record,
)

log = logging.getLogger(__name__)

PASSAGE_ALIAS = "positive"
# Records are processed in chunks of this many rows: bounded Python-level work per JSONL chunk,
# and string columns stay far below Arrow's 2 GiB-per-array offset limit.
CHUNK_ROWS = 65_536
_CORPUS_VERSION = 1
_FILE_SUFFIXES = (".parquet", ".jsonl", ".ndjson")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset to read: where, in which canonical format, its language (one code for the
    whole dataset, or a column holding one per record) and the instruction of its queries.

    `name` defaults to the file name without suffix; `split` picks a split of a datasets folder
    holding several; `extra_columns` are source columns carried into the table (e.g. a
    `direction` to group batches by).
    """

    path: Path
    format: str
    name: str = ""
    language: str | None = None
    language_column: str | None = None
    instruction: str | None = None
    split: str | None = None
    extra_columns: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "extra_columns", tuple(self.extra_columns))
        if not self.name:
            name = self.path.stem if self.path.suffix in _FILE_SUFFIXES else self.path.name
            object.__setattr__(self, "name", name)


def check_spec(spec: DatasetSpec, extra_languages: Collection[str] = ()) -> Format:
    """The spec's format, after checking its format and language (file-level: always raises)."""
    try:
        fmt = get_format(spec.format)
    except ValueError:
        raise DataError(spec.path, UNKNOWN_FORMAT, f"{spec.format!r}; valid formats: "
                        f"{', '.join(sorted(FORMATS))}", field="format") from None
    if (spec.language is None) == (spec.language_column is None):
        raise DataError(spec.path, INVALID_ENTRY, "give exactly one of language (a code "
                        "for the whole dataset) and language_column", field="language")
    clash = [c for c in spec.extra_columns if c in canonical_schema(0).names
             or c in (spec.language_column, PASSAGE_ALIAS) or NEGATIVE_COLUMN.fullmatch(c)]
    if clash:
        raise DataError(spec.path, INVALID_ENTRY, f"{clash[0]!r} is a column of the "
                        "canonical table already", field="extra_columns")
    if spec.language is not None:
        problem = check_language_code(spec.language, extra_languages)
        if problem is not None:
            raise DataError(spec.path, f"{UNKNOWN_LANGUAGE} {spec.language!r}", problem,
                            field="language")
    return fmt


def _required_negatives(fmt: Format, num_negatives: int | None) -> int:
    need = fmt.num_negatives if num_negatives is None else int(num_negatives)
    if not 0 <= need <= fmt.max_negatives:
        raise ValueError(f"num_negatives={need} for {fmt.name}: it stores at most "
                         f"{fmt.max_negatives} negatives per record")
    return need


# ---------------------------------------------------------------------------------------------
# Datasets


def read_dataset(
    spec: DatasetSpec,
    on_bad_record: OnBadRecord = "raise",
    report: SkipReport | None = None,
    num_negatives: int | None = None,
    extra_languages: Collection[str] = (),
) -> pa.Table:
    """The dataset as a canonical table (see the module docstring).

    `num_negatives` is the fewest hard negatives a record must store (default: the format's).
    With `on_bad_record="skip"` bad records are dropped and counted in `report`; file-level
    problems (missing, empty or unreadable file, unknown format or language) always raise.
    """
    mode = check_on_bad_record(on_bad_record)
    report = report if report is not None else SkipReport()
    fmt = check_spec(spec, extra_languages)
    need = _required_negatives(fmt, num_negatives)
    path = spec.path
    if not path.exists():
        raise DataError(path, FILE_NOT_FOUND)
    checker = RecordChecker(path, fmt, need, mode, report, "row", spec.language_column,
                            spec.extra_columns, extra_languages)
    counts_before, read_before = dict(report.counts), report.records.get(str(path), 0)
    if path.is_dir():
        pieces = _check_table(_datasets_folder_table(spec), spec, fmt, need, checker)
    elif path.suffix == ".parquet":
        pieces = _check_table(_parquet_table(spec, fmt, need), spec, fmt, need, checker)
    elif path.suffix in (".jsonl", ".ndjson"):
        checker.row_kind = "line"
        pieces = _read_jsonl(spec, checker)
    else:
        raise DataError(path, UNREADABLE_FILE, "expected a .parquet or .jsonl file or "
                        "a datasets folder (save_to_disk)")
    reasons = {r: n - counts_before.get((f, r), 0) for (f, r), n in report.counts.items()
               if f == str(path) and n > counts_before.get((f, r), 0)}
    skipped, read = sum(reasons.values()), report.records.get(str(path), 0) - read_before
    kept = [(t, k) for t, k in pieces if t.num_rows]
    if not kept:
        raise DataError(path, NO_RECORDS_LEFT, f"all {read} records skipped: {reasons}")
    if skipped:
        log.warning("%s: skipped %d of %d records (see the skip report)", path, skipped, read)
    k = min(k for _, k in kept)
    return _canonical([t for t, _ in kept], spec, fmt, k)


def _parquet_table(spec: DatasetSpec, fmt: Format, need: int) -> pa.Table:
    path = spec.path
    if path.stat().st_size == 0:
        raise DataError(path, EMPTY_FILE, "0 bytes")
    try:
        names = pq.read_schema(path, memory_map=True).names
        # Only the columns used: a corpus may carry large ones we do not need.
        columns = list(source_columns(names, spec, fmt, need).values())
        return pq.read_table(path, columns=columns, memory_map=True)
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, UNREADABLE_FILE, f"not a parquet file ({e})") from None


def _datasets_folder_table(spec: DatasetSpec) -> pa.Table:
    import datasets

    path = spec.path
    if not any(path.iterdir()):
        raise DataError(path, EMPTY_FILE, "empty folder")
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(path, UNREADABLE_FILE, f"not a datasets folder ({e})"
                        ) from None
    if isinstance(ds, datasets.DatasetDict):
        splits = sorted(ds)
        if spec.split is None and len(splits) != 1:
            raise DataError(path, INVALID_ENTRY, f"several splits {splits}; choose one "
                            "with split", field="split")
        split = spec.split if spec.split is not None else splits[0]
        if split not in ds:
            raise DataError(path, INVALID_ENTRY, f"no split {split!r}; splits: "
                            f"{splits}", field="split")
        ds = ds[split]
    # The arrow view of a slice is zero-copy over the folder's memory-mapped files.
    return ds.with_format("arrow")[:]


def source_columns(names: Sequence[str], spec: DatasetSpec, fmt: Format, need: int
                   ) -> dict[str, str]:
    """Canonical column -> the file's column, for a file with columns `names` read as `spec`
    needing `need` negatives; file-level problems (no query or passage, both `passage` and
    `positive`, gaps in or too few negative columns, a missing language or extra column)
    raise a `DataError` naming the field."""
    path = spec.path

    def missing(column: str, detail: str = "") -> DataError:
        return DataError(path, MISSING_FIELD, detail or f"no such column; columns: "
                         f"{list(names)}", field=column)

    if "query" not in names:
        raise missing("query")
    if "passage" in names and PASSAGE_ALIAS in names:
        raise DataError(path, DUPLICATE_FIELD, f"both 'passage' and its alias "
                        f"{PASSAGE_ALIAS!r}", field=PASSAGE_ALIAS)
    passage = "passage" if "passage" in names else PASSAGE_ALIAS
    if passage not in names:
        raise missing("passage")
    numbers = sorted(int(m[1]) for c in names if (m := NEGATIVE_COLUMN.fullmatch(c)))
    for j, number in enumerate(numbers, 1):
        if number != j:
            raise missing(f"negative_{j}", f"negative columns are numbered 1..{numbers[-1]} "
                          "without gaps")
    if len(numbers) < need:
        raise DataError(path, TOO_FEW_NEGATIVES, f"the file has {len(numbers)} "
                        f"negative columns, {fmt.name} needs {need}",
                        field=f"negative_{len(numbers) + 1}")
    columns = {"query": "query", "passage": passage}
    columns.update({f"negative_{j}": f"negative_{j}" for j in numbers})
    for c in [spec.language_column, *spec.extra_columns]:
        if c is not None:
            if c not in names:
                raise missing(c)
            columns[c] = c
    return columns


def _check_table(table: pa.Table, spec: DatasetSpec, fmt: Format, need: int,
                 checker: RecordChecker) -> list[tuple[pa.Table, int]]:
    if table.num_rows == 0:
        raise DataError(spec.path, EMPTY_FILE, "no records")
    columns = source_columns(table.column_names, spec, fmt, need)
    checker.field_names = {c: s for c, s in columns.items() if c != s}
    table = table.select(list(columns.values())).rename_columns(list(columns))
    # Zero-copy re-chunking bounds the per-chunk work (UTF-8 scans, casts).
    table = pa.Table.from_batches(table.to_batches(max_chunksize=CHUNK_ROWS), table.schema)
    return [checker.check(table)]


_JSON_TYPES = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _read_jsonl(spec: DatasetSpec, checker: RecordChecker) -> list[tuple[pa.Table, int]]:
    path = spec.path
    if path.stat().st_size == 0:
        raise DataError(path, EMPTY_FILE, "0 bytes")
    read_before = checker.report.records.get(str(path), 0)
    pieces = [checker.check(table, rows) for table, rows in _jsonl_chunks(spec, checker)]
    if not pieces and checker.report.records.get(str(path), 0) == read_before:
        raise DataError(path, EMPTY_FILE, "no records (only blank lines)")
    return pieces


def _jsonl_chunks(spec: DatasetSpec, checker: RecordChecker
                  ) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """Chunks of parsed records with their line numbers; records that do not parse, or hold a
    value that is not a string, go to `checker.reject` (raise or count)."""
    fixed = ["query", "passage", *([spec.language_column] if spec.language_column else []),
             *spec.extra_columns]
    wanted = set(fixed) | {PASSAGE_ALIAS}
    cols: dict[str, list] = {c: [] for c in fixed}
    lines: list[int] = []

    def flush() -> tuple[pa.Table, np.ndarray]:
        count = max((int(c.split("_")[1]) for c in cols if c.startswith("negative_")), default=0)
        names = fixed + [f"negative_{j}" for j in range(1, count + 1)]
        data = {c: pa.array(cols[c] if c in cols else [None] * len(lines), pa.string())
                for c in names}
        chunk = (pa.table(data), np.asarray(lines, dtype=np.int64))
        cols.clear()
        cols.update({c: [] for c in fixed})
        lines.clear()
        return chunk

    with spec.path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue  # blank lines (e.g. a trailing one) are not records
            record = _parse_jsonl_line(raw, wanted)
            if isinstance(record, tuple):
                if checker.on_bad_record == "raise" and lines:
                    yield flush()  # a bad record among the earlier lines is reported first
                reason, key, detail = record
                checker.reject(lineno, reason, key, detail)
                continue
            if PASSAGE_ALIAS in record:
                checker.field_names.setdefault("passage", PASSAGE_ALIAS)
                record["passage"] = record.pop(PASSAGE_ALIAS)
            n = len(lines)
            for key, value in record.items():
                if key not in cols:
                    cols[key] = [None] * n  # first negative_j of this chunk
                cols[key].append(value)
            for values in cols.values():
                if len(values) == n:
                    values.append(None)
            lines.append(lineno)
            if len(lines) >= CHUNK_ROWS:
                yield flush()
    if lines:
        yield flush()


def _parse_jsonl_line(raw: bytes, wanted: set[str]
                      ) -> dict[str, str | None] | tuple[str, str | None, str]:
    """The record's wanted fields, or (reason, field, detail) of what is wrong with the line."""
    try:
        text, bad_bytes = raw.decode("utf-8"), False
    except UnicodeDecodeError as e:
        # surrogateescape keeps the undecodable bytes visible, so the field can be named.
        text, bad_bytes, first_bad = raw.decode("utf-8", "surrogateescape"), True, e.start
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        if bad_bytes:
            return INVALID_UTF8, None, f"undecodable byte at offset {first_bad}"
        return MALFORMED_JSON, None, f"{e.msg} (column {e.colno})"
    if not isinstance(record, dict):
        return NOT_AN_OBJECT, None, f"got a JSON {_JSON_TYPES.get(type(record), 'value')}"
    # Bytes that are not UTF-8, or \ud800-style escapes of lone surrogates (not encodable).
    if bad_bytes or (b"\\u" in raw and _SURROGATE_ESCAPE.search(raw)):
        for key, value in record.items():
            if _SURROGATE.search(key) or (isinstance(value, str) and _SURROGATE.search(value)):
                return INVALID_UTF8, key, "undecodable bytes or a lone surrogate"
        if bad_bytes:
            return INVALID_UTF8, None, f"undecodable byte at offset {first_bad}"
    if "passage" in record and PASSAGE_ALIAS in record:
        return DUPLICATE_FIELD, PASSAGE_ALIAS, "both 'passage' and its alias 'positive'"
    out: dict[str, str | None] = {}
    for key, value in record.items():
        if key in wanted or NEGATIVE_COLUMN.fullmatch(key):
            if value is not None and not isinstance(value, str):
                return WRONG_TYPE, key, (f"got a JSON {_JSON_TYPES.get(type(value), 'value')}, "
                                         "expected a string")
            out[key] = value
    return out


def _canonical(tables: Sequence[pa.Table], spec: DatasetSpec, fmt: Format, k: int) -> pa.Table:
    """Checked tables -> one canonical table with negatives 1..k and the dataset's columns."""
    schema = canonical_schema(k, spec.extra_columns)
    negatives = [f"negative_{j}" for j in range(1, k + 1)]
    batches = []
    for table in tables:
        for batch in table.to_batches(max_chunksize=CHUNK_ROWS):
            n = batch.num_rows
            language = (batch.column(spec.language_column) if spec.language_column
                        else constant_column(spec.language, n))
            arrays = [batch.column("query"), batch.column("passage"),
                      *(batch.column(c) for c in negatives), constant_column(spec.name, n),
                      language, constant_column(fmt.name, n),
                      constant_column(spec.instruction, n),
                      *(batch.column(c) for c in spec.extra_columns)]
            batches.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
    return pa.Table.from_batches(batches, schema)


def canonical_schema(num_negatives: int, extra_columns: Sequence[str] = ()) -> pa.Schema:
    """query, passage, negative_1..k, dataset, language, format, instruction, extras."""
    names = ["query", "passage", *(f"negative_{j}" for j in range(1, num_negatives + 1)),
             "dataset", "language", "format", "instruction", *extra_columns]
    return pa.schema([pa.field(n, pa.string()) for n in names])


# ---------------------------------------------------------------------------------------------
# Corpus file


def write_corpus(
    specs: Iterable[DatasetSpec],
    path: str | Path,
    num_negatives: Mapping[str, int] | None = None,
    on_bad_record: OnBadRecord = "raise",
    report: SkipReport | None = None,
    extra_languages: Collection[str] = (),
    overwrite: bool = False,
) -> Path:
    """Read, check and concatenate the datasets into one Arrow IPC file at `path`.

    Datasets are read one at a time and staged on disk, so at most one is held in memory. The
    file's schema metadata lists each dataset's rows (see `corpus_io.read_corpus`) and a
    fingerprint of the inputs and options: an existing file with the same fingerprint is reused
    (its skip counts are added to `report`) unless `overwrite`.
    """
    specs = list(specs)
    if not specs:
        raise ValueError("write_corpus needs at least one dataset")
    mode = check_on_bad_record(on_bad_record)
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"dataset names used more than once: {duplicates}")
    report = report if report is not None else SkipReport()
    out = Path(path)
    key = fingerprint(_build_inputs(specs, num_negatives, mode, extra_languages))
    if out.exists() and not overwrite:
        meta = corpus_metadata(out)
        if meta is not None and meta.get("fingerprint") == key:
            log.info("reusing corpus %s", out)
            report.update(meta["report"])
            return out
    build = SkipReport(max_examples=report.max_examples)
    staging = out.parent / f".{out.name}.parts"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        entries, parts, offset = [], [], 0
        for i, spec in enumerate(specs):
            fmt = check_spec(spec, extra_languages)
            need = (num_negatives or {}).get(fmt.name)
            table = read_dataset(spec, mode, build, need, extra_languages)
            part = staging / f"{i}.arrow"
            write_ipc(part, table.schema, table.to_batches(max_chunksize=CHUNK_ROWS))
            k = sum(bool(NEGATIVE_COLUMN.fullmatch(c)) for c in table.column_names)
            entries.append(CorpusEntry(spec.name, fmt.name, k, offset, table.num_rows,
                                       str(spec.path), spec.instruction))
            parts.append(part)
            offset += table.num_rows
            del table
        extras = list(dict.fromkeys(c for s in specs for c in s.extra_columns))
        meta = {"version": _CORPUS_VERSION, "fingerprint": key, "report": build.to_dict()}
        schema = with_corpus_metadata(
            canonical_schema(max(e.num_negatives for e in entries), extras), meta, entries)
        write_ipc(out, schema, (_padded(batch, schema) for part in parts
                                for batch in ipc_batches(part)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.update(build.to_dict())
    log.info("corpus %s: %d records from %d datasets", out, offset, len(entries))
    return out


def _padded(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """The batch with the schema's columns, nulls where it has none (fewer negatives, extras
    of other datasets)."""
    have = set(batch.schema.names)
    arrays = [batch.column(n) if n in have else pa.nulls(batch.num_rows, pa.string())
              for n in schema.names]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _build_inputs(specs: Sequence[DatasetSpec], num_negatives: Mapping[str, int] | None,
                  mode: str, extra_languages: Collection[str]) -> dict[str, Any]:
    """What `write_corpus` fingerprints: each dataset's spec and files (names, sizes, mtimes)
    and the options."""
    def stat(p: Path) -> Any:
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        return [[str(f.relative_to(p)) if p.is_dir() else f.name, f.stat().st_size,
                 f.stat().st_mtime_ns] for f in files if f.is_file()]

    return {
        "version": _CORPUS_VERSION,
        "specs": [{**asdict(s), "path": str(s.path.resolve()),
                   "stat": stat(s.path) if s.path.exists() else None} for s in specs],
        "num_negatives": dict(sorted((num_negatives or {}).items())),
        "on_bad_record": mode,
        "extra_languages": sorted(extra_languages),
    }
