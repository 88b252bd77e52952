"""Reading and writing built corpora: what every source (`f2llm.data.sources`) shares.

A source builds into its own output folder, once: under that folder's lock (`build_lock`: other
ranks and runs wait, then find the finished build), keyed by a fingerprint of its inputs and
options (`fingerprint`), through private temporary files renamed into place (`atomic_write`),
so an interrupted build is never taken for a finished one. A corpus file is one Arrow IPC file
of records whose schema metadata lists each dataset's rows and the fingerprint it was built
with (`CorpusWriter`, `write_ipc`; `corpus_metadata`); training maps it into memory
(`read_corpus`) and copies nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from f2llm.data.records import SkipReport
from f2llm.paths import private_tmp

log = logging.getLogger(__name__)

CORPUS_METADATA_KEY = b"f2llm.corpus"
# A negative column of the canonical table: negative_1, negative_2, ...
NEGATIVE_COLUMN = re.compile(r"negative_([1-9][0-9]*)")


# ---------------------------------------------------------------------------------------------
# Building once


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """SHA-256 of `inputs` (what a build read and how: file names, sizes, mtimes, options) as
    canonical JSON; values JSON lacks (paths) count by their `str`."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


@contextmanager
def build_lock(folder: str | Path) -> Iterator[None]:
    """One builder per output folder: an exclusive `flock` on `<folder>/.build.lock` (created
    with the folder). Other ranks and runs block here, then find the finished build by its
    fingerprint."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".build.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def atomic_write(path: str | Path, tag: str = "") -> Iterator[Path]:
    """A temporary path of this process and thread (`f2llm.paths.private_tmp`) to write `path`
    through: renamed to `path` when the block succeeds, removed when it raises."""
    tmp = private_tmp(Path(path), tag)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def write_json(path: str | Path, data: Any) -> None:
    """`data` as indented JSON at `path`, written atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def read_json(path: str | Path) -> Any:
    """The JSON at `path`, or None when there is none or it does not parse (rebuild)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Arrow IPC files


def read_ipc(path: str | Path) -> pa.Table:
    """The table of an Arrow IPC file, memory-mapped (nothing is copied into RAM)."""
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def ipc_batches(path: str | Path) -> Iterator[pa.RecordBatch]:
    """The record batches of an Arrow IPC file, memory-mapped, one at a time."""
    reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    for i in range(reader.num_record_batches):
        yield reader.get_batch(i)


def write_ipc(path: str | Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> None:
    """`batches` into an Arrow IPC file at `path`, written atomically."""
    with atomic_write(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
            pa.ipc.new_file(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def schema_metadata(path: str | Path, key: bytes) -> dict[str, Any] | None:
    """The JSON stored under `key` in an Arrow IPC file's schema metadata; None when the file
    is missing, is no IPC file or has no such entry (an older build: rebuild)."""
    try:
        schema = pa.ipc.open_file(pa.memory_map(str(path), "r")).schema
        return json.loads(schema.metadata[key])
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError):
        return None


def constant_column(value: str | None, n: int) -> pa.Array:
    """`n` copies of `value` as a string column (nulls for None)."""
    if value is None:
        return pa.nulls(n, pa.string())
    return pa.repeat(pa.scalar(value, pa.string()), n)


# ---------------------------------------------------------------------------------------------
# Corpus files


@dataclass(frozen=True)
class CorpusEntry:
    """Where a dataset's rows sit in the corpus file, and how many negatives they store."""

    name: str
    format: str
    num_negatives: int
    offset: int
    num_rows: int
    path: str
    instruction: str | None = None


@dataclass
class CorpusFile:
    """A memory-mapped corpus file: datasets one after another, negatives padded with nulls to
    the largest count among them."""

    table: pa.Table
    datasets: dict[str, CorpusEntry]

    def dataset(self, name: str) -> pa.Table:
        """One dataset's rows (zero-copy) with only the negative columns it fills."""
        if name not in self.datasets:
            raise KeyError(f"no dataset {name!r} in the corpus; datasets: {sorted(self.datasets)}")
        entry = self.datasets[name]
        rows = self.table.slice(entry.offset, entry.num_rows)
        unused = [c for c in rows.column_names
                  if (m := NEGATIVE_COLUMN.fullmatch(c)) and int(m[1]) > entry.num_negatives]
        return rows.drop_columns(unused)


def corpus_metadata(path: str | Path) -> dict[str, Any] | None:
    """A corpus file's metadata (`fingerprint`, `datasets`, `report`, ...), or None when there
    is no readable corpus file at `path`."""
    return schema_metadata(path, CORPUS_METADATA_KEY)


def read_corpus(path: str | Path) -> CorpusFile:
    """A corpus file (`write_corpus`, `CorpusWriter`), memory-mapped."""
    table = read_ipc(path)
    if CORPUS_METADATA_KEY not in (table.schema.metadata or {}):
        raise ValueError(f"{path} is not a corpus file written by write_corpus")
    meta = json.loads(table.schema.metadata[CORPUS_METADATA_KEY])
    entries = {e["name"]: CorpusEntry(**e) for e in meta["datasets"]}
    return CorpusFile(table, entries)


def with_corpus_metadata(schema: pa.Schema, meta: Mapping[str, Any],
                         entries: Sequence[CorpusEntry]) -> pa.Schema:
    """`schema` carrying the corpus metadata `meta` with `entries` as its datasets."""
    data = {**meta, "datasets": [asdict(e) for e in entries]}
    return schema.with_metadata({CORPUS_METADATA_KEY: json.dumps(data)})


class CorpusWriter:
    """Writes record batches to one corpus file whose schema metadata lists the datasets.

    The metadata must be known when the file is opened. Rows and negatives per dataset are
    predicted (e.g. from parquet footers); where the data turns out otherwise (skipped records,
    rows storing fewer negatives) the finished file is rewritten once with the true entries.
    A batch is written in a background thread while the caller prepares the next (Arrow's IPC
    write releases the GIL); one write at a time, so at most one batch waits in memory. Used
    as a context manager, an error before `finish` aborts (no temporary file is left).
    """

    def __init__(self, path: Path, schema: pa.Schema, predicted: list[CorpusEntry],
                 meta: dict[str, Any]) -> None:
        self.path, self.schema, self.predicted, self.meta = path, schema, predicted, meta
        self.tmp = private_tmp(path)
        self.sink = pa.OSFile(str(self.tmp), "wb")
        self.writer = pa.ipc.new_file(self.sink, with_corpus_metadata(schema, meta, predicted))
        self.rows = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="corpus-write")
        self._pending: Future[None] | None = None

    def __enter__(self) -> CorpusWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        if kind is not None:
            self.abort()

    def write(self, batch: pa.RecordBatch) -> None:
        """Queue `batch` (after the previous write, whose error, if any, is raised here)."""
        self._wait()
        self._pending = self._pool.submit(self.writer.write_batch, batch)
        self.rows += batch.num_rows

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def finish(self, entries: list[CorpusEntry], report: SkipReport) -> dict[str, Any]:
        """Close the file under its name, with `entries` and `report` in the metadata; return
        that metadata."""
        self.meta["report"] = report.to_dict()
        self._wait()
        self._pool.shutdown()
        self.writer.close()
        self.sink.close()
        if entries != self.predicted or report.skipped:
            log.info("rewriting %s with the rows and negatives found", self.path)
            final = private_tmp(self.path, ".final")
            with pa.OSFile(str(final), "wb") as sink, pa.ipc.new_file(
                    sink, with_corpus_metadata(self.schema, self.meta, entries)) as writer:
                for batch in ipc_batches(self.tmp):
                    writer.write_batch(batch)
            self.tmp.unlink()
            self.tmp = final
        self.tmp.replace(self.path)
        return {**self.meta, "datasets": [asdict(e) for e in entries]}

    def abort(self) -> None:
        """Stop writing and remove the temporary file."""
        with suppress(Exception):
            self._wait()
        self._pool.shutdown()
        for closable in (self.writer, self.sink):
            with suppress(pa.ArrowException, OSError):
                closable.close()
        self.tmp.unlink(missing_ok=True)
