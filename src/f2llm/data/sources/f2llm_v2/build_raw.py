"""The raw layout (`<name>.parquet`: `query`, `passage`, `negative_1..negative_24`) -> the corpus
file: the canonical string table of `readers`, every record checked by `records.RecordChecker`
(file / row / field messages), streamed one parquet batch at a time."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from f2llm.data.corpus_io import CorpusEntry, CorpusWriter, constant_column
from f2llm.data.readers import DatasetSpec, canonical_schema, check_spec, source_columns
from f2llm.data.records import OnBadRecord, RecordChecker, SkipReport, check_records_kept
from f2llm.data.sources.f2llm_v2.layout import (
    Layout,
    negative_count,
    parquet_batches,
    schema_names,
)
from f2llm.data.sources.f2llm_v2.recipes import INSTRUCTED_PREFIX, DatasetRecipe


def build_raw(layout: Layout, recipes: Sequence[DatasetRecipe], path: Path,
              num_negatives: Mapping[str, int] | None, mode: OnBadRecord, report: SkipReport,
              extra_languages: Collection[str], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Check every record of the raw layout's datasets and write them into the corpus file
    `path`; skipped records are counted in `report`. Returns the file's metadata: `meta` (the
    build's version and fingerprint) with the datasets' rows."""
    # `code:<lang>` labels group code datasets; they are not natural-language codes.
    extra_languages = {*extra_languages, *(r.language for r in recipes
                                           if r.language and r.language.startswith("code:"))}
    plans = []
    for r in recipes:
        spec = DatasetSpec(layout.files[r.name], r.format, r.name, r.language, r.language_column,
                           r.instruction)
        fmt = check_spec(spec, extra_languages)
        need = (num_negatives or {}).get(fmt.name, fmt.num_negatives)
        names = schema_names(spec.path)
        columns = source_columns(names, spec, fmt, need)  # file-level column checks
        k = min(negative_count(names), fmt.max_negatives)
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
    entries, offset = [], 0
    with CorpusWriter(path, schema, predicted,
                      {**meta, "layout": "raw", "report": SkipReport().to_dict()}) as writer:
        for r, spec, fmt, need, columns, _, _ in plans:
            checker = RecordChecker(spec.path, fmt, need, mode, report, "row",
                                    spec.language_column, (), extra_languages,
                                    {c: s for c, s in columns.items() if c != s})
            kept, fewest, row, instructed = 0, None, 0, True
            for batch in parquet_batches(spec.path, list(columns.values())):
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
            check_records_kept(spec.path, row, kept)
            # Queries that carry their instruction already (as in the F2LLM v1 data) get none.
            entries.append(CorpusEntry(r.name, fmt.name, fewest, offset, kept, str(spec.path),
                                       None if instructed else r.instruction))
            offset += kept
        return writer.finish(entries, report)


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    # A batch's column is one chunk: take it as is (combine_chunks would copy it).
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _raw_batch(table: pa.Table, recipe: DatasetRecipe, fmt: str, schema: pa.Schema
               ) -> pa.RecordBatch:
    """Checked records of `recipe`'s dataset as a batch of the corpus file's `schema`."""
    n = table.num_rows
    language = (_one_chunk(table.column(recipe.language_column)) if recipe.language_column
                else constant_column(recipe.language, n))
    arrays = []
    for name in schema.names:
        if name in ("query", "passage") or name.startswith("negative_"):
            arrays.append(_one_chunk(table.column(name)) if name in table.column_names
                          else pa.nulls(n, pa.string()))
        else:
            value = {"dataset": recipe.name, "format": fmt, "instruction": recipe.instruction,
                     "direction": recipe.direction}
            arrays.append(language if name == "language" else constant_column(value[name], n))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
