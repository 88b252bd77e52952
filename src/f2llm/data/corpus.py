"""What a corpus source hands the datamodule and `eval.py`: training datasets and held-out sets."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from f2llm.data.corpus_io import atomic_write, schema_metadata
from f2llm.data.records import SkipReport

log = logging.getLogger(__name__)
# What a group is keyed by in the stored index: a record's language and translation direction.
GROUP_COLUMNS = ("language", "direction")
_GROUPS_METADATA_KEY = b"f2llm_groups"


@dataclass(frozen=True)
class TrainingDataset:
    """One training dataset on disk: a parquet of records in one of the canonical formats (or
    one dataset of a combined corpus file, `readers.write_corpus`)."""

    name: str
    path: Path
    format: str
    instruction: str | None = None


@dataclass
class Corpus:
    """What a corpus source (`f2llm.data.sources`) builds.

    `val` maps a held-out set's name to its parquet; each held-out task
    (`f2llm.evaluation.tasks`) reads the set it names, and a task whose set is absent is not
    run. `class_labels` are the label texts of the classification set; `skip_report` counts the
    records a reader skipped (None: the source skips nothing). `pretokenized` holds the stored
    token ids of datasets that come tokenized (`sources.f2llm_v2.PretokenizedDocs`): their texts
    are never tokenized again. `groups` holds every group's record indices, stored with the
    corpus (None: the datamodule computes them at startup).
    """

    train: list[TrainingDataset]
    val: dict[str, Path] = field(default_factory=dict)
    class_labels: list[str] = field(default_factory=list)
    skip_report: SkipReport | None = None
    pretokenized: Any = None
    groups: StoredGroups | None = None

    def instructions(self) -> dict[str, str]:
        """Dataset name -> its query instruction, for the datasets that have one."""
        return {d.name: d.instruction for d in self.train if d.instruction}

    def dataset_of_format(self) -> dict[str, TrainingDataset]:
        """Format -> a training dataset of that format (the last listed wins): whose
        instruction a held-out task's queries get."""
        return {d.format: d for d in self.train}


def group_rows(table: pa.Table, columns: list[str]) -> dict[str, np.ndarray]:
    """Row indices per distinct value of `columns` (joined with "/"), e.g. "fr/en->xx"."""
    # A column some datasets lack (e.g. `direction`) is null there: group those rows under "".
    # A column with no value at all is of Arrow's null type (an empty dataset's): as strings.
    parts = [pc.fill_null(table.column(c).combine_chunks().cast(pa.string()), "")
             for c in columns]
    key = parts[0]
    for part in parts[1:]:
        key = pc.binary_join_element_wise(key, part, "/")
    encoded = key.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    names = encoded.dictionary.to_pylist()
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    return {names[i]: order[bounds[i] : bounds[i + 1]] for i in range(len(names))}


_GROUPS_SCHEMA = pa.schema([pa.field("dataset", pa.string()), pa.field("language", pa.string()),
                            pa.field("direction", pa.string()),
                            pa.field("rows", pa.large_list(pa.int64()))])


class StoredGroups:
    """The record indices of every (dataset, language, direction) group of a corpus file,
    written next to it at build time (`write`) and memory-mapped at startup (`rows`): a run on
    a built corpus does no per-record work to group it. The file carries the corpus's
    fingerprint; `fingerprint()` tells whether it belongs to the corpus at hand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._index: dict[str, list[tuple[str, str, np.ndarray]]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_index": None}

    @staticmethod
    def write(path: str | Path, datasets: Iterable[tuple[str, pa.Table]], fingerprint: str
              ) -> StoredGroups:
        """Group each (name, records) of `datasets` by `GROUP_COLUMNS` (one dataset in memory
        at a time: its rows' codes) and write the index under a temporary name, then rename."""
        path = Path(path)
        start, count = time.perf_counter(), 0
        meta = {_GROUPS_METADATA_KEY: json.dumps({"fingerprint": fingerprint,
                                                 "columns": list(GROUP_COLUMNS)})}
        with atomic_write(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
                pa.ipc.new_file(sink, _GROUPS_SCHEMA.with_metadata(meta)) as writer:
            for name, table in datasets:
                groups = group_rows(table, list(GROUP_COLUMNS))
                keys = [_key_values(table, rows[0]) for rows in groups.values()]
                sizes = np.array([len(r) for r in groups.values()], dtype=np.int64)
                offsets = np.concatenate([[0], np.cumsum(sizes)])
                values = np.concatenate(list(groups.values())).astype(np.int64)
                rows = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
                writer.write_batch(pa.record_batch(
                    [pa.array([name] * len(keys)), pa.array([k[0] for k in keys]),
                     pa.array([k[1] for k in keys]), rows], schema=_GROUPS_SCHEMA))
                count += len(keys)
        log.info("wrote the group indices %s (%d groups) in %.2f s", path, count,
                 time.perf_counter() - start)
        return StoredGroups(path)

    def fingerprint(self) -> str | None:
        """The fingerprint of the corpus the index was written for (None: no readable index)."""
        meta = schema_metadata(self.path, _GROUPS_METADATA_KEY)
        return meta.get("fingerprint") if isinstance(meta, dict) else None

    def _load(self) -> dict[str, list[tuple[str, str, np.ndarray]]]:
        if self._index is None:
            reader = pa.ipc.open_file(pa.memory_map(str(self.path), "r"))
            index: dict[str, list[tuple[str, str, np.ndarray]]] = {}
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                rows = batch.column("rows")
                # Zero-copy views of the mapped file, one per group.
                offsets = rows.offsets.to_numpy()
                values = rows.values.to_numpy()
                for j, (name, language, direction) in enumerate(zip(
                        *(batch.column(c).to_pylist() for c in _GROUPS_SCHEMA.names[:3]),
                        strict=True)):
                    index.setdefault(name, []).append(
                        (language, direction, values[offsets[j] : offsets[j + 1]]))
            self._index = index
            log.info("group indices read from %s (%d datasets)", self.path, len(index))
        return self._index

    def rows(self, dataset: str, columns: Sequence[str]) -> dict[str, np.ndarray] | None:
        """What `group_rows(<dataset's records>, columns)` gives, from the stored index; None
        when `columns` asks for a column the index is not keyed by (or names none), or the
        index has no such dataset."""
        stored = self._load().get(dataset)
        if stored is None or not columns or not set(columns) <= set(GROUP_COLUMNS):
            return None
        merged: dict[str, list[np.ndarray]] = {}
        for language, direction, rows in stored:
            value = {"language": language, "direction": direction}
            merged.setdefault("/".join(value[c] for c in columns), []).append(rows)
        # Several stored groups under one key (a coarser grouping): their rows in file order,
        # as group_rows gives them.
        return {k: v[0] if len(v) == 1 else np.sort(np.concatenate(v))
                for k, v in merged.items()}


def _key_values(table: pa.Table, row: int) -> tuple[str, ...]:
    return tuple(table.column(c)[int(row)].as_py() or "" for c in GROUP_COLUMNS)
