"""The tokenized layout (`tokenize_data_qwen.py`) -> the corpus file, token ids kept as they are.

`<name>_query.parquet` holds `query_input_ids` (token ids, EOS appended, at most 2047 + 1) and
doc-id references `passage_input_ids`, `negative_<i>_input_ids`; `<name>_corpus.parquet` or one
`corpus.parquet` holds `doc_id`, `input_ids`. `corpus.arrow` gets the query ids and the row of
each referenced document in `docs.arrow` (documents stay deduplicated); the run-time reader is
`pretokenized.PretokenizedDocs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from f2llm.data.corpus_io import CorpusEntry, CorpusWriter, atomic_write, constant_column
from f2llm.data.formats import get_format
from f2llm.data.records import (
    MISSING_FIELD,
    TOO_FEW_NEGATIVES,
    WRONG_TYPE,
    DataError,
    OnBadRecord,
    SkipReport,
    check_records_kept,
)
from f2llm.data.sources.f2llm_v2.layout import (
    Layout,
    negative_count,
    parquet_batches,
    schema_names,
)
from f2llm.data.sources.f2llm_v2.recipes import DatasetRecipe

DANGLING_DOC_ID = "dangling doc id"


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
        raise DataError(path, WRONG_TYPE, f"the column holds {column.type}, expected "
                        "a list of token ids", first_row, field)
    return column.cast(pa.list_(pa.int32()))


def _empty_ids(ids: pa.Array) -> np.ndarray:
    """Mask of records whose id list is null or empty."""
    lengths = pc.list_value_length(ids).fill_null(0).to_numpy(zero_copy_only=False)
    return lengths == 0


def build_tokenized(layout: Layout, recipes: Sequence[DatasetRecipe], out: Path,
                    num_negatives: Mapping[str, int] | None, mode: OnBadRecord,
                    report: SkipReport, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Write the documents of the tokenized layout into `<out>/docs.arrow` and the checked
    records, each reference resolved to a row there, into `<out>/corpus.arrow`; skipped
    records are counted in `report`. Returns the corpus file's metadata: `meta` (the build's
    version and fingerprint) with the datasets' rows, the docs file, EOS and largest id."""
    docs_path = out / "docs.arrow"
    ranges, eos, max_id = _write_docs(layout, recipes, docs_path)
    plans = []
    for r in recipes:
        path = layout.files[r.name]
        fmt = get_format(r.format)
        need = (num_negatives or {}).get(fmt.name, fmt.num_negatives)
        names = schema_names(path, ("query_input_ids", "passage_input_ids"))
        k = min(negative_count(names, "_input_ids"), fmt.max_negatives)
        if k < need:
            raise DataError(path, TOO_FEW_NEGATIVES, f"the file has {k} negative "
                            f"columns, {fmt.name} needs {need}",
                            field=f"negative_{k + 1}_input_ids")
        if r.language_column is not None and r.language_column not in names:
            raise DataError(path, MISSING_FIELD, "no such column",
                            field=r.language_column)
        plans.append((r, path, fmt, need, k, pq.ParquetFile(path).metadata.num_rows))
    width = max(p[4] for p in plans)
    schema = _tokenized_schema(width)
    predicted, offset = [], 0
    for r, path, fmt, _, k, rows in plans:
        predicted.append(CorpusEntry(r.name, fmt.name, k, offset, rows, str(path), r.instruction))
        offset += rows
    entries, offset = [], 0
    with CorpusWriter(out / "corpus.arrow", schema, predicted,
                      {**meta, "layout": "tokenized", "docs": docs_path.name, "eos_id": eos,
                       "max_token_id": max_id, "report": SkipReport().to_dict()}) as writer:
        for r, path, fmt, need, k, _ in plans:
            start, stop = ranges.get(r.name, (0, 0))
            corpus_file = layout.corpus_files.get(r.name, layout.shared_corpus)
            value_set = _dataset_doc_ids(docs_path, start, stop)
            refs = ["passage_input_ids", *(f"negative_{j}_input_ids" for j in range(1, k + 1))]
            columns = ["query_input_ids", *refs,
                       *([r.language_column] if r.language_column else [])]
            kept, row, fewest = 0, 0, k
            for batch in parquet_batches(path, columns):
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
                            if r.language_column else constant_column(r.language, n))
                if m < n:
                    mask = pa.array(keep)
                    query, language = query.filter(mask), language.filter(mask)
                    where = where[:, keep]
                resolved = [pa.array(where[j].astype(np.int64) + start, mask=where[j] < 0)
                            for j in range(k + 1)]
                arrays = [query, *resolved, *(pa.nulls(m, pa.int64()) for _ in range(width - k))]
                arrays += [constant_column(r.name, m), language, constant_column(fmt.name, m),
                           constant_column(r.instruction, m), constant_column(r.direction, m)]
                writer.write(pa.RecordBatch.from_arrays(arrays, schema=schema))
                kept += m
            check_records_kept(path, row, kept)
            entries.append(CorpusEntry(r.name, fmt.name, fewest, offset, kept, str(path),
                                       r.instruction))
            offset += kept
        return writer.finish(entries, report)


def _check_records(batch: pa.RecordBatch, query: pa.Array, refs: Sequence[str], where: np.ndarray,
                   absent: np.ndarray, fmt: str, need: int, corpus_file: Path, path: Path,
                   rows: np.ndarray, mode: OnBadRecord, report: SkipReport
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
            raise DataError(path, reason, detail(i), int(rows[i]), field_of(i))
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
            raise DataError(path, WRONG_TYPE, f"the column holds {column.type}, "
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
    with atomic_write(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
            pa.ipc.new_file(sink, _DOCS_SCHEMA) as writer:
        for name, file in sources:
            schema_names(file, ("doc_id", "input_ids"))
            row = 0
            for batch in parquet_batches(file, ["doc_id", "input_ids"]):
                n = batch.num_rows
                ids = _id_lists(batch.column("input_ids"), file, "input_ids", row)
                empty = _empty_ids(ids)
                if empty.any():
                    raise DataError(file, MISSING_FIELD, "null or no token ids",
                                    row + int(np.argmax(empty)), "input_ids")
                doc_id = batch.column("doc_id").cast(pa.string())
                if doc_id.null_count:
                    raise DataError(file, MISSING_FIELD, "absent or null",
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
    if len(last_ids) != 1:
        raise DataError(sources[0][1], "inconsistent EOS", f"documents end with "
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
