"""The public F2LLM-v2 data folder: which files hold which datasets (raw or tokenized layout,
as in github.com/codefuse-ai/CodeFuse-Embeddings, F2LLM/, commit 1c52915), their recipes, and
their parquet batches streamed with one batch read ahead."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from f2llm.data.records import EMPTY_FILE, MISSING_FIELD, UNREADABLE_FILE, DataError
from f2llm.data.sources.f2llm_v2.recipes import DatasetRecipe, resolve_recipes

DOWNLOAD_COMMAND = ("python scripts/f2llm_v2_data.py download --root <folder> "
                    "[--datasets msmarco webfaq_deu ...]")
# A per-record language column is used where the name states no language.
LANGUAGE_COLUMNS = ("language", "lang")
# Tokenized layout: <name>_query.parquet, with <name>_corpus.parquet or one corpus.parquet.
QUERY_SUFFIX, CORPUS_SUFFIX = "_query.parquet", "_corpus.parquet"
SHARED_CORPUS_FILE = "corpus.parquet"
# Rows per streamed batch. Parquet is read with buffered streams (no pre-buffering of whole
# row groups), so memory is bounded by this, not by a file's row-group size.
BATCH_ROWS = 8192


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
    tokenized = {p.name[: -len(QUERY_SUFFIX)]: p for p in parquet
                 if p.name.endswith(QUERY_SUFFIX)}
    corpus = {p.name[: -len(CORPUS_SUFFIX)]: p for p in parquet
              if p.name.endswith(CORPUS_SUFFIX)}
    shared = [p for p in parquet if p.name == SHARED_CORPUS_FILE]
    raw = {p.stem: p for p in parquet if not p.name.endswith((QUERY_SUFFIX, CORPUS_SUFFIX))
           and p.name != SHARED_CORPUS_FILE}
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


def schema_names(path: Path, required: Sequence[str] = ()) -> list[str]:
    """The column names of a parquet file; a `DataError` when it is empty, no parquet, or lacks
    a `required` column."""
    if path.stat().st_size == 0:
        raise DataError(path, EMPTY_FILE, "0 bytes")
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, UNREADABLE_FILE, f"not a parquet file ({e})") from None
    for c in required:
        if c not in names:
            raise DataError(path, MISSING_FIELD, "no such column", field=c)
    return names


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
        have = schema_names(layout.files[name])
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



def negative_count(names: Sequence[str], suffix: str = "") -> int:
    """How many negative columns `negative_1<suffix>`, `negative_2<suffix>`, ... `names` holds
    without a gap."""
    count = 0
    while f"negative_{count + 1}{suffix}" in names:
        count += 1
    return count



def _parquet_file(path: Path) -> pq.ParquetFile:
    return pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)


_DONE = object()


def parquet_batches(path: Path, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The file's record batches (`BATCH_ROWS` rows), the next one read in a background thread
    while the caller checks and writes this one: Arrow's parquet decoding releases the GIL, so
    reading overlaps the rest of the build. One batch ahead: memory stays bounded."""
    reader = _parquet_file(path).iter_batches(batch_size=BATCH_ROWS, columns=list(columns))
    with ThreadPoolExecutor(1, thread_name_prefix="parquet-ahead") as pool:
        ahead = pool.submit(next, reader, _DONE)
        while (batch := ahead.result()) is not _DONE:
            ahead = pool.submit(next, reader, _DONE)
            yield batch
