"""LightningDataModule: records on disk -> per-group batches -> packed token chunks."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torch.utils.data import DataLoader, Dataset

from f2llm.data.batch import EvalBatch, TrainBatch, text_keys
from f2llm.data.corpus import Corpus, TrainingDataset, group_rows
from f2llm.data.corpus_io import read_corpus
from f2llm.data.formats import FORMATS
from f2llm.data.sampler import LanguageTemperatureSampler, StagedSampler
from f2llm.evaluation.heldout import heldout_sets, read_val_sets
from f2llm.model.packing import pack_by_length

log = logging.getLogger(__name__)


def memory_mapped_table(parquet_path: str | Path, cache_dir: str | Path | None = None) -> pa.Table:
    """The parquet file's table, memory-mapped through an Arrow IPC copy next to it (or in
    `cache_dir`), so large corpora are not held in Python lists or copied per worker."""
    src = Path(parquet_path)
    arrow = Path(cache_dir or src.parent) / (src.stem + ".arrow")
    if not arrow.exists() or arrow.stat().st_mtime < src.stat().st_mtime:
        table = pq.read_table(src)
        # A per-process name: several ranks may build the copy at once; the rename is atomic.
        tmp = arrow.with_suffix(f".arrow.{os.getpid()}.tmp")
        arrow.parent.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=64_000)
        tmp.replace(arrow)
    return pa.ipc.open_file(pa.memory_map(str(arrow), "r")).read_all()


def take_rows(table: pa.Table, indices: np.ndarray, columns: list[str]) -> dict[str, list]:
    """`columns` of the rows at `indices` (in that order) as Python lists.

    Arrow's `take` on a multi-chunk column concatenates the chunks first, i.e. copies the whole
    column per batch; taking from each touched chunk separately copies only the batch.
    """
    offsets = np.cumsum([0] + [len(c) for c in table.column(columns[0]).chunks])
    chunk_of = np.searchsorted(offsets, indices, side="right") - 1
    out: dict[str, list] = {c: [None] * len(indices) for c in columns}
    for chunk in np.unique(chunk_of):
        where = np.nonzero(chunk_of == chunk)[0]
        local = pa.array(indices[where] - offsets[chunk])
        for c in columns:
            values = table.column(c).chunk(int(chunk)).take(local).to_pylist()
            for slot, value in zip(where.tolist(), values, strict=True):
                out[c][slot] = value
    return out


@dataclass
class Stage:
    """A training stage: which datasets, whether queries carry instructions, how many steps."""

    name: str
    datasets: list[str]
    instructions: bool = False
    steps: int | None = None  # None: one pass over the stage's records


def select_datasets(names: list[str], formats: Mapping[str, str]) -> list[str]:
    """A stage's datasets: names, `*` (every dataset) or `format:<f>` (every dataset of a
    format), e.g. `[format:retrieval]` for stage 1 of the public F2LLM-v2 data. `formats` maps
    each known dataset to its format."""
    out: list[str] = []
    for name in names:
        if name == "*":
            picked = list(formats)
        elif isinstance(name, str) and name.startswith("format:"):
            picked = [d for d, f in formats.items() if f == name[len("format:"):]]
            if not picked:
                raise ValueError(f"stage selector {name!r}: no dataset of that format")
        else:
            picked = [name]
        out += [d for d in picked if d not in out]
    return out


class TrainBatches(Dataset):
    """Item = one sampler batch (a group and record indices) -> tokenized, packed texts."""

    def __init__(
        self,
        tables: Mapping[str, pa.Table],
        datasets: Mapping[str, TrainingDataset],
        group_dataset: Mapping[str, str],
        group_language: Mapping[str, str],
        stages: Mapping[str, Stage],
        num_negatives: Mapping[str, int],
        tokenize: Callable[[list[str]], list[list[int]]],
        pad_id: int,
        max_tokens_per_chunk: int,
        format_query: Callable[[str, str | None], str],
        pretokenized: Any = None,
    ) -> None:
        self.tables, self.datasets = tables, datasets
        # Token ids stored in the corpus (the tokenized F2LLM-v2 layout): no re-tokenizing.
        self.pretokenized = pretokenized
        self.group_dataset, self.group_language = group_dataset, group_language
        self.stages, self.num_negatives = stages, num_negatives
        self.tokenize, self.pad_id, self.max_tokens = tokenize, pad_id, max_tokens_per_chunk
        self.format_query = format_query

    def __len__(self) -> int:  # the sampler decides the length
        raise TypeError("TrainBatches is indexed by sampler batches")

    def texts(self, item: Mapping[str, Any]) -> list[str]:
        """A sampler batch's texts in `TrainBatch`'s layout: the queries (with the stage's
        instruction), their positives, then the hard negatives column by column."""
        name = self.group_dataset[item["group"]]
        spec, stage = self.datasets[name], self.stages[item["stage"]]
        negative_columns = [f"negative_{j + 1}" for j in range(self.num_negatives[spec.format])]
        rows = take_rows(self.tables[name], np.asarray(item["indices"]),
                         ["query", "passage", *negative_columns])
        instruction = spec.instruction if stage.instructions else None
        queries = [self.format_query(q, instruction) for q in rows["query"]]
        return queries + rows["passage"] + [t for c in negative_columns for t in rows[c]]

    def token_ids(self, item: Mapping[str, Any]) -> list[list[int]]:
        """The texts of `texts(item)` as token ids; a pre-tokenized dataset's stored ids are
        used as they are (only a stage's instruction prefix is tokenized)."""
        name = self.group_dataset[item["group"]]
        if self.pretokenized is None or name not in self.pretokenized.datasets:
            return self.tokenize(self.texts(item))
        spec, stage = self.datasets[name], self.stages[item["stage"]]
        negative_columns = [f"negative_{j + 1}" for j in range(self.num_negatives[spec.format])]
        instruction = spec.instruction if stage.instructions else None
        return self.pretokenized.token_ids(self.tables[name], np.asarray(item["indices"]),
                                           negative_columns, instruction)

    def __getitem__(self, item: Mapping[str, Any]) -> TrainBatch:
        name = self.group_dataset[item["group"]]
        spec = self.datasets[name]
        k = self.num_negatives[spec.format]
        token_ids = self.token_ids(item)
        chunks, restore, padding = pack_by_length(token_ids, self.pad_id, self.max_tokens)
        return TrainBatch(
            chunks=chunks, restore=restore, batch_size=len(item["indices"]), num_negatives=k,
            use_inbatch=FORMATS[spec.format].use_inbatch, format=spec.format, dataset=name,
            language=self.group_language[item["group"]], group=item["group"],
            indices=np.asarray(item["indices"]), stage=item["stage"], epoch=item["epoch"],
            position=item["position"], num_tokens=sum(len(t) for t in token_ids),
            num_padding=padding, keys=text_keys(token_ids[len(item["indices"]):]),
        )


class EvalTexts(Dataset):
    """Held-out texts to embed, as length-sorted items of one set each (one forward per item).

    `sets` maps a name such as "bitext/source" to its texts; `instructions` maps some of those
    names to the instruction their texts get as queries when `instructed` is on.
    """

    def __init__(
        self,
        sets: Mapping[str, list[str]],
        tokenize: Callable[[list[str]], list[list[int]]],
        pad_id: int,
        format_query: Callable[[str, str | None], str],
        instructions: Mapping[str, str] | None = None,
        texts_per_item: int = 256,
        max_tokens_per_chunk: int = 8192,
    ) -> None:
        self.tokenize, self.pad_id, self.max_tokens = tokenize, pad_id, max_tokens_per_chunk
        self.format_query = format_query
        self.instructions = dict(instructions or {})
        self.instructed = False  # set by the datamodule from the current stage
        self.sets = {name: list(texts) for name, texts in sets.items()}
        self.items: list[tuple[str, list[int]]] = []
        for name, texts in self.sets.items():
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            self.items += [(name, order[i : i + texts_per_item])
                           for i in range(0, len(order), texts_per_item)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> EvalBatch:
        name, rows = self.items[i]
        instruction = self.instructions.get(name) if self.instructed else None
        texts = [self.format_query(self.sets[name][r], instruction) for r in rows]
        chunks, restore, _ = pack_by_length(self.tokenize(texts), self.pad_id, self.max_tokens)
        return EvalBatch(chunks, restore, rows, name)


class _Positioned:
    """Tags each sampler batch with where it sits in the schedule (for exact resume)."""

    def __init__(self, sampler: StagedSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        # The whole epoch: after a resume, Lightning's restored batch counter covers the part
        # already trained on, and the sampler continues from its saved position.
        return len(self.sampler)

    def __iter__(self):
        for item in self.sampler:
            # The sampler has already advanced past this batch.
            yield {**item, "epoch": self.sampler.epoch, "position": self.sampler.position - 1}


class F2LLMDataModule(L.LightningDataModule):
    """Finds or builds the datasets, groups records by (dataset, language, ...), and serves
    one-group batches through the stages; also the held-out evaluation texts."""

    def __init__(
        self,
        corpus: Callable[[], Corpus],
        batch_size: int = 64,
        num_negatives: Mapping[str, int] | None = None,
        alpha: float = 1.0,
        group_by: list[str] | None = None,
        stages: list[Mapping[str, Any]] | None = None,
        max_length: int | None = None,
        max_tokens_per_chunk: int = 4096,
        seed: int = 0,
        num_workers: int = 0,
        exhaustive: bool = False,
    ) -> None:
        super().__init__()
        self.corpus = corpus
        self.batch_size = batch_size
        self.num_negatives = {name: f.num_negatives for name, f in FORMATS.items()}
        self.num_negatives.update(num_negatives or {})
        self.alpha = alpha
        # Every batch comes from one group; its in-batch negatives are the group's texts.
        self.group_by = list(group_by or ["language"])
        self.stage_specs = [dict(s) for s in stages] if stages else None
        self.max_length = max_length
        self.max_tokens_per_chunk = max_tokens_per_chunk
        self.seed = seed
        self.num_workers = num_workers
        # True: every record exactly once per epoch (alpha unused); see LanguageTemperatureSampler.
        self.exhaustive = exhaustive
        self.encoder = None  # set by the entry point: tokenization follows the model
        self._backend: Any = None  # the encoder's Rust tokenizer, truncating (see _tokenize)
        self.found: Corpus | None = None
        self.sampler: StagedSampler | None = None
        self.realised: dict[tuple[str, str, str, str], int] = {}
        self._consumed: dict[str, int] | None = None
        self._pending_state: dict[str, Any] | None = None

    def attach_encoder(self, encoder: Any) -> None:
        self.encoder = encoder
        self._backend = None

    def prepare_data(self) -> None:
        self.found = self.corpus()

    def setup(self, stage: str | None = None) -> None:
        if self.found is None:
            self.found = self.corpus()
        self.datasets = {d.name: d for d in self.found.train}
        pretokenized = self.found.pretokenized
        if pretokenized is not None and self.encoder is not None:
            # Fails here, before any work, when the model's tokenizer is not the data's.
            pretokenized.bind(self.encoder.tokenizer, self.max_length or self.encoder.max_length,
                              self.encoder.query_prompt)
        self.stages = self._stages()
        self.tables = {name: _training_table(d) for name, d in self.datasets.items()
                       if any(name in s.datasets for s in self.stages.values())}
        report = self.found.skip_report
        if report is not None and report.skipped:
            log.warning("training without %d bad records; per file and reason:\n%s",
                        report.skipped, report.summary())
        for name, table in self.tables.items():
            k = self.num_negatives[self.datasets[name].format]
            have = sum(c.startswith("negative_") for c in table.schema.names)
            if k > have:
                raise ValueError(f"dataset {name!r} ({self.datasets[name].path}) stores {have} "
                                 f"negatives per record; num_negatives asks for {k}")
        self.group_dataset, self.group_language, groups = {}, {}, {}
        stored = self.found.groups  # written with the corpus: no per-record work here
        for name, table in self.tables.items():
            columns = [c for c in self.group_by if c in table.schema.names]
            rows_of = stored.rows(name, columns) if stored is not None else None
            for key, rows in (rows_of if rows_of is not None else
                              group_rows(table, columns)).items():
                group = f"{name}/{key}"
                groups[group] = rows
                self.group_dataset[group] = name
                self.group_language[group] = key.split("/")[0]
        rank = self.trainer.global_rank if self.trainer else 0
        world = self.trainer.world_size if self.trainer else 1
        samplers = []
        for i, st in enumerate(self.stages.values()):
            stage_groups = {g: r for g, r in groups.items() if self.group_dataset[g] in st.datasets}
            samplers.append(LanguageTemperatureSampler(
                stage_groups, self.batch_size, self.alpha, self.seed, rank, world,
                batches_per_epoch=st.steps, stream=i, exhaustive=self.exhaustive))
        self.sampler = StagedSampler(samplers, list(self.stages))
        if self._pending_state is not None:
            self.sampler.load_state_dict(self._pending_state)
            self.realised = _realised_from_state(self._pending_state)
        self.group_sizes = {k: len(v) for k, v in groups.items()}
        self.val_sets = read_val_sets(self.found)
        log.info("train records: %d in %d groups; stages %s",
                 sum(t.num_rows for t in self.tables.values()), len(groups),
                 {name: len(s) for name, s in zip(self.stages, samplers, strict=True)})

    def _stages(self) -> dict[str, Stage]:
        if not self.stage_specs:  # one stage over every dataset, no instructions
            return {"train": Stage("train", list(self.datasets))}
        stages = {}
        for spec in self.stage_specs:
            st = Stage(**spec)
            st.datasets = self._select(st.datasets)
            unknown = [d for d in st.datasets if d not in self.datasets]
            if unknown:
                raise ValueError(f"stage {st.name!r} names unknown datasets {unknown}; "
                                 f"known: {sorted(self.datasets)}")
            stages[st.name] = st
        return stages

    def _select(self, names: list[str]) -> list[str]:
        return select_datasets(names, {d: spec.format for d, spec in self.datasets.items()})

    def stage_schedule(self) -> tuple[list[str], list[int]] | None:
        """The stages' names and the positions where each starts, then the epoch's length
        (None before setup)."""
        if self.sampler is None:
            return None
        return list(self.sampler.names), list(self.sampler.starts)

    def stage_at(self, position: int) -> Stage:
        return self.stages[self.sampler.names[self.sampler.stage_at(position)]]

    def calibration_texts(self, n: int, seed: int = 0) -> list[str]:
        """`n` texts of the first stage's datasets (queries as the stage formats them, and
        passages), for pruning calibration."""
        stage = next(iter(self.stages.values()))
        rng = np.random.default_rng(seed)
        per_dataset = max(1, n // (2 * len(stage.datasets)))
        texts: list[str] = []
        for name in stage.datasets:
            table, spec = self.tables[name], self.datasets[name]
            rows = np.sort(rng.choice(table.num_rows, min(per_dataset, table.num_rows),
                                      replace=False))
            pretokenized = self.found.pretokenized if self.found is not None else None
            if pretokenized is not None and name in pretokenized.datasets:
                picked = pretokenized.texts(table, rows, self.encoder.tokenizer)
            else:
                picked = take_rows(table, rows, ["query", "passage"])
            instruction = spec.instruction if stage.instructions else None
            fmt = self.encoder.format_query if self.encoder is not None else None
            texts += [fmt(q, instruction) if fmt else q for q in picked["query"]]
            texts += picked["passage"]
        return texts

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        if self.encoder is None:
            raise RuntimeError("call attach_encoder(encoder) first: batches are tokenized")
        max_length = self.max_length or self.encoder.max_length
        if self._backend is None:
            self._backend = truncating_backend(self.encoder.tokenizer, max_length)
        if self._backend is False:  # a slow (Python) tokenizer
            return self.encoder.tokenizer(texts, truncation=True,
                                          max_length=max_length)["input_ids"]
        return [e.ids for e in encode_ids(self._backend, texts)]

    def train_dataloader(self) -> DataLoader:
        if self.encoder is None:
            raise RuntimeError("call attach_encoder(encoder) first: batches are tokenized")
        dataset = TrainBatches(
            self.tables, self.datasets, self.group_dataset, self.group_language, self.stages,
            self.num_negatives, self._tokenize, self.encoder.tokenizer.pad_token_id,
            self.max_tokens_per_chunk, self.encoder.format_query,
            self.found.pretokenized,
        )
        # batch_size=None: the sampler already yields whole batches.
        return DataLoader(dataset, sampler=_Positioned(self.sampler), batch_size=None,
                          num_workers=self.num_workers, collate_fn=_identity)

    def eval_texts(self) -> EvalTexts:
        """The held-out sets as named text lists (see `callbacks.MatryoshkaEval`)."""
        if self.encoder is None:
            raise RuntimeError("call attach_encoder(encoder) first: texts are tokenized")
        sets, instructed = heldout_sets(self.val_sets, self.found)
        by_format = self.found.dataset_of_format()
        instructions = {name: by_format[fmt].instruction for name, fmt in instructed.items()
                        if fmt in by_format}
        return EvalTexts(sets, self._tokenize, self.encoder.tokenizer.pad_token_id,
                         self.encoder.format_query, instructions)

    def val_dataloader(self) -> DataLoader:
        self._eval = self.eval_texts()
        return DataLoader(self._eval, batch_size=None, shuffle=False, num_workers=0,
                          collate_fn=_identity)

    def update_eval_instructions(self) -> None:
        """Queries carry instructions in evaluation when the stage trained last trains with them.

        That stage is the last consumed batch's: the sampler runs ahead of it (the loop and the
        loader workers prefetch), and `trainer.validate` after fit calls `setup` again, which
        rebuilds the sampler at position 0, i.e. stage 1. Before any batch (a resumed run's
        first validation) the sampler's restored position says it."""
        if getattr(self, "_eval", None) is None or self.sampler is None:
            return
        consumed = (self._consumed or {}).get("position", self.sampler.position)
        position = min(max(consumed - 1, 0), len(self.sampler) - 1)
        self._eval.instructed = self.stage_at(position).instructions

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Called in consumption order (prefetching runs ahead of it): the resume point.
        if isinstance(batch, TrainBatch):
            self._consumed = {"epoch": batch.epoch, "position": batch.position + 1}
            key = (batch.stage, batch.dataset, batch.format, batch.language)
            self.realised[key] = self.realised.get(key, 0) + 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        if self.sampler is None:
            return {}
        state: dict[str, Any] = self.sampler.state_dict()
        if self._consumed is not None:
            state.update(self._consumed)
        state["realised"] = [[*k, v] for k, v in sorted(self.realised.items())]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self._pending_state = dict(state)
        if self.sampler is not None:
            self.sampler.load_state_dict(state)
            self.realised = _realised_from_state(state)


def truncating_backend(tokenizer: Any, max_length: int) -> Any:
    """A copy of `tokenizer`'s Rust backend that truncates to `max_length` and never pads.

    Called directly it gives the ids of `tokenizer(texts, truncation=True, max_length=...)`
    (post-processor included, so EOS stays last) without building a Python dict per text,
    which took a third of a batch's loading time. False for a slow tokenizer (no backend).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.enable_truncation(max_length, strategy="longest_first",
                           direction=getattr(tokenizer, "truncation_side", "right"))
    return copy


def encode_ids(backend: Any, texts: list[str]) -> list[Any]:
    """`backend.encode_batch_fast` where the tokenizers version has it (no character offsets,
    which we never use: a quarter less time), else `encode_batch`."""
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return encode(texts)


def _training_table(spec: TrainingDataset) -> pa.Table:
    """A dataset's records, memory-mapped: a parquet file (via its Arrow copy) or one dataset
    of a combined corpus file written by `readers.write_corpus`."""
    if Path(spec.path).suffix == ".arrow":
        return read_corpus(spec.path).dataset(spec.name)
    return memory_mapped_table(spec.path)


def _realised_from_state(state: Mapping[str, Any]) -> dict[tuple[str, str, str, str], int]:
    return {tuple(row[:4]): int(row[4]) for row in state.get("realised", [])}


def _identity(batch: Any) -> Any:
    return batch
