"""LightningDataModule: records on disk -> per-group batches -> packed token chunks."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from f2llm.data.batch import TrainBatch, text_keys
from f2llm.data.corpus import Corpus, TrainingDataset, group_rows
from f2llm.data.corpus_io import read_corpus
from f2llm.data.formats import FORMATS
from f2llm.data.sampler import LanguageTemperatureSampler, StagedSampler
from f2llm.model.packing import pack_by_length
from f2llm.model.tokenizer import TruncatingTokenizer

if TYPE_CHECKING:
    from f2llm.model import Encoder

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


@dataclass(frozen=True)
class Stage:
    """A training stage: which datasets, whether queries carry instructions, how many steps."""

    name: str
    datasets: Sequence[str]
    instructions: bool = False
    steps: int | None = None  # None: one pass over the stage's records


@dataclass(frozen=True, eq=False)
class Group:
    """Records of one dataset that share their `group_by` values (language, direction, ...):
    a batch is drawn from one group, so its in-batch candidates share them."""

    name: str  # "<dataset>/<values joined by '/'>", e.g. "gettext_bitext/fr/en->xx"
    dataset: str
    language: str
    rows: np.ndarray  # row indices into the dataset's table


@dataclass(frozen=True, eq=False)
class DataPlan:
    """What the datamodule trains on, fixed once in `setup` (`F2LLMDataModule.plan`).

    `corpus` is what the source found (its held-out sets, class labels, skip report and stored
    token ids included); `datasets` are its training datasets by name, `tables` the records of
    those a stage draws from; `groups` are what batches are drawn from; `num_negatives` the hard
    negatives a batch uses per format; `starts` the epoch position where each stage begins,
    then the epoch's length.
    """

    corpus: Corpus
    stages: Mapping[str, Stage]  # in training order
    datasets: Mapping[str, TrainingDataset]
    tables: Mapping[str, pa.Table]
    groups: Mapping[str, Group]
    num_negatives: Mapping[str, int]
    starts: tuple[int, ...]

    def negative_columns(self, dataset: str) -> list[str]:
        """The columns of `dataset`'s hard negatives that its batches use."""
        k = self.num_negatives[self.datasets[dataset].format]
        return [f"negative_{j + 1}" for j in range(k)]

    def instruction(self, dataset: str, stage: str) -> str | None:
        """The instruction `dataset`'s queries get in `stage` (None: none)."""
        return self.datasets[dataset].instruction if self.stages[stage].instructions else None


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

    def __init__(self, plan: DataPlan, tokenize: TruncatingTokenizer,
                 format_query: Callable[[str, str | None], str], max_tokens_per_chunk: int
                 ) -> None:
        self.plan = plan
        self.tokenize, self.format_query = tokenize, format_query
        self.max_tokens = max_tokens_per_chunk

    def __len__(self) -> int:  # the sampler decides the length
        raise TypeError("TrainBatches is indexed by sampler batches")

    def texts(self, item: Mapping[str, Any]) -> list[str]:
        """A sampler batch's texts in `TrainBatch`'s layout: the queries (with the stage's
        instruction), their positives, then the hard negatives column by column."""
        name = self.plan.groups[item["group"]].dataset
        negative_columns = self.plan.negative_columns(name)
        rows = take_rows(self.plan.tables[name], np.asarray(item["indices"]),
                         ["query", "passage", *negative_columns])
        instruction = self.plan.instruction(name, item["stage"])
        queries = [self.format_query(q, instruction) for q in rows["query"]]
        return queries + rows["passage"] + [t for c in negative_columns for t in rows[c]]

    def token_ids(self, item: Mapping[str, Any]) -> list[list[int]]:
        """The texts of `texts(item)` as token ids; a pre-tokenized dataset's stored ids are
        used as they are (only a stage's instruction prefix is tokenized)."""
        name = self.plan.groups[item["group"]].dataset
        pretokenized = self.plan.corpus.pretokenized
        if pretokenized is None or name not in pretokenized.datasets:
            return self.tokenize(self.texts(item))
        return pretokenized.token_ids(self.plan.tables[name], np.asarray(item["indices"]),
                                      self.plan.negative_columns(name),
                                      self.plan.instruction(name, item["stage"]))

    def __getitem__(self, item: Mapping[str, Any]) -> TrainBatch:
        group = self.plan.groups[item["group"]]
        spec = self.plan.datasets[group.dataset]
        token_ids = self.token_ids(item)
        chunks, restore, padding = pack_by_length(token_ids, self.tokenize.pad_id,
                                                  self.max_tokens)
        return TrainBatch(
            chunks=chunks, restore=restore, batch_size=len(item["indices"]),
            num_negatives=self.plan.num_negatives[spec.format],
            use_inbatch=FORMATS[spec.format].use_inbatch, format=spec.format,
            dataset=group.dataset, language=group.language, group=group.name,
            indices=np.asarray(item["indices"]), stage=item["stage"], epoch=item["epoch"],
            position=item["position"], num_tokens=sum(len(t) for t in token_ids),
            num_padding=padding, keys=text_keys(token_ids[len(item["indices"]):]),
        )


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
    one-group batches through the stages.

    What it offers the rest of a run: `plan` (the stages, datasets, groups and held-out sets,
    fixed in `setup`), `trained_stage()` (whose instructions the held-out queries follow),
    `realised` (the batches served so far per stage, dataset, format and language),
    `calibration_texts()` and `training_token_ids()`, and `tokenize` (how texts become the
    encoder's token ids). `encoder` is the model whose tokenizer, max length and query
    template the texts follow (`instantiate(cfg.data, encoder=encoder)`); without one the
    plan is built but nothing is tokenized.
    """

    def __init__(
        self,
        corpus: Callable[[], Corpus],
        encoder: Encoder | None = None,
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
        self.encoder = encoder
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
        self._tokenize = (None if encoder is None else
                          TruncatingTokenizer(encoder.tokenizer, max_length or encoder.max_length))
        self._found: Corpus | None = None  # prepare_data's, so setup does not build it again
        self._plan: DataPlan | None = None
        self.sampler: StagedSampler | None = None
        self.realised: dict[tuple[str, str, str, str], int] = {}
        self._consumed: dict[str, int] | None = None
        self._pending_state: dict[str, Any] | None = None

    @property
    def plan(self) -> DataPlan:
        """The stages, datasets, groups and held-out sets this run trains on (after `setup`)."""
        if self._plan is None:
            raise RuntimeError("the datamodule has no plan before setup(): call setup() first")
        return self._plan

    @property
    def tokenize(self) -> TruncatingTokenizer:
        """Texts -> the encoder's token ids, truncated at `max_length` (the model's if unset)."""
        if self._tokenize is None:
            raise RuntimeError("the datamodule tokenizes with its encoder: build it with one, "
                               "instantiate(cfg.data, encoder=encoder)")
        return self._tokenize

    def prepare_data(self) -> None:
        self._found = self.corpus()

    def setup(self, stage: str | None = None) -> None:
        if self._plan is not None:
            # `trainer.validate` after fit sets up again: the plan and the sampler's place stay.
            return
        found = self._found if self._found is not None else self.corpus()
        datasets = {d.name: d for d in found.train}
        if found.pretokenized is not None and self.encoder is not None:
            # Fails here, before any work, when the model's tokenizer is not the data's.
            found.pretokenized.bind(self.encoder.tokenizer, self.tokenize.max_length,
                                    self.encoder.query_prompt)
        stages = self._stages(datasets)
        tables = {name: _training_table(d) for name, d in datasets.items()
                  if any(name in s.datasets for s in stages.values())}
        report = found.skip_report
        if report is not None and report.skipped:
            log.warning("training without %d bad records; per file and reason:\n%s",
                        report.skipped, report.summary())
        for name, table in tables.items():
            k = self.num_negatives[datasets[name].format]
            have = sum(c.startswith("negative_") for c in table.schema.names)
            if k > have:
                raise ValueError(f"dataset {name!r} ({datasets[name].path}) stores {have} "
                                 f"negatives per record; num_negatives asks for {k}")
        groups: dict[str, Group] = {}
        stored = found.groups  # written with the corpus: no per-record work here
        for name, table in tables.items():
            columns = [c for c in self.group_by if c in table.schema.names]
            rows_of = stored.rows(name, columns) if stored is not None else None
            for key, rows in (rows_of if rows_of is not None else
                              group_rows(table, columns)).items():
                group = Group(f"{name}/{key}", name, key.split("/")[0], rows)
                groups[group.name] = group
        rank = self.trainer.global_rank if self.trainer else 0
        world = self.trainer.world_size if self.trainer else 1
        samplers = []
        for i, st in enumerate(stages.values()):
            stage_groups = {g.name: g.rows for g in groups.values() if g.dataset in st.datasets}
            samplers.append(LanguageTemperatureSampler(
                stage_groups, self.batch_size, self.alpha, self.seed, rank, world,
                batches_per_epoch=st.steps, stream=i, exhaustive=self.exhaustive))
        self.sampler = StagedSampler(samplers, list(stages))
        if self._pending_state is not None:
            self.sampler.load_state_dict(self._pending_state)
            self.realised = _realised_from_state(self._pending_state)
        self._plan = DataPlan(found, stages, datasets, tables, groups, dict(self.num_negatives),
                              tuple(self.sampler.starts))
        log.info("train records: %d in %d groups; stages %s",
                 sum(t.num_rows for t in tables.values()), len(groups),
                 {name: len(s) for name, s in zip(stages, samplers, strict=True)})

    def _stages(self, datasets: Mapping[str, TrainingDataset]) -> dict[str, Stage]:
        if not self.stage_specs:  # one stage over every dataset, no instructions
            return {"train": Stage("train", tuple(datasets))}
        formats = {d: spec.format for d, spec in datasets.items()}
        stages = {}
        for spec in self.stage_specs:
            st = Stage(**{**spec, "datasets": tuple(select_datasets(spec["datasets"], formats))})
            unknown = [d for d in st.datasets if d not in datasets]
            if unknown:
                raise ValueError(f"stage {st.name!r} names unknown datasets {unknown}; "
                                 f"known: {sorted(datasets)}")
            stages[st.name] = st
        return stages

    def trained_stage(self) -> Stage:
        """The stage of the last batch trained on: the held-out queries carry instructions when
        it trains with them.

        Counted from the batches consumed (`on_before_batch_transfer`, or the checkpoint a run
        resumed from), not from the sampler, which runs ahead of training (the loop and the
        loader workers prefetch); before any batch, from the sampler's position."""
        sampler = self.sampler
        if sampler is None:
            raise RuntimeError("the datamodule has no sampler before setup(): call setup() first")
        consumed = (self._consumed or {}).get("position", sampler.position)
        position = min(max(consumed - 1, 0), len(sampler) - 1)
        return self.plan.stages[sampler.names[sampler.stage_at(position)]]

    def calibration_texts(self, n: int, seed: int = 0) -> list[str]:
        """`n` texts of the first stage's datasets (queries as the stage formats them, and
        passages), for pruning calibration."""
        plan = self.plan
        stage = next(iter(plan.stages.values()))
        pretokenized = plan.corpus.pretokenized
        rng = np.random.default_rng(seed)
        per_dataset = max(1, n // (2 * len(stage.datasets)))
        texts: list[str] = []
        for name in stage.datasets:
            table = plan.tables[name]
            rows = np.sort(rng.choice(table.num_rows, min(per_dataset, table.num_rows),
                                      replace=False))
            if pretokenized is not None and name in pretokenized.datasets:
                picked = pretokenized.texts(table, rows, self.tokenize.tokenizer)
            else:
                picked = take_rows(table, rows, ["query", "passage"])
            instruction = plan.instruction(name, stage.name)
            fmt = self.encoder.format_query if self.encoder is not None else None
            texts += [fmt(q, instruction) if fmt else q for q in picked["query"]]
            texts += picked["passage"]
        return texts

    def training_token_ids(self, batch_texts: int = 8192) -> Tensor:
        """Every token id the training batches can contain: the distinct texts of each stage's
        datasets (queries formatted as the stage formats them, passages, the negatives the
        format uses), tokenized as batches are, plus the EOS and pad ids. A superset of the ids
        a run draws is harmless (`f2llm.model.vocab`: a kept row never drawn trains as it
        would untrimmed)."""
        plan, tokenize = self.plan, self.tokenize
        pretokenized = plan.corpus.pretokenized
        tokenizer = tokenize.tokenizer
        seen = {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
        # Every distinct text once, over all stages and columns (in bitext each text is the
        # query of one direction and the passage of the other).
        parts: list[pa.Array] = []
        for stage in plan.stages.values():
            for name in stage.datasets:
                if pretokenized is not None and name in pretokenized.datasets:
                    raise NotImplementedError(
                        f"vocabulary trimming reads texts; dataset {name!r} is stored tokenized")
                table = plan.tables[name]
                instruction = plan.instruction(name, stage.name)
                columns = ["passage", *plan.negative_columns(name)]
                if instruction is None:
                    columns.append("query")
                else:
                    queries = pc.unique(table.column("query")).to_pylist()
                    parts.append(pa.array([self.encoder.format_query(q, instruction)
                                           for q in queries], pa.large_string()))
                parts += [pc.cast(chunk, pa.large_string()) for c in columns
                          for chunk in table.column(c).chunks]
        texts = pc.unique(pa.chunked_array(parts, pa.large_string())).to_pylist()
        for start in range(0, len(texts), batch_texts):
            for ids in tokenize(texts[start:start + batch_texts]):
                seen.update(ids)
        return torch.tensor(sorted(seen), dtype=torch.long)

    def train_dataloader(self) -> DataLoader:
        dataset = TrainBatches(self.plan, self.tokenize, self.encoder.format_query,
                               self.max_tokens_per_chunk)
        # batch_size=None: the sampler already yields whole batches.
        return DataLoader(dataset, sampler=_Positioned(self.sampler), batch_size=None,
                          num_workers=self.num_workers, collate_fn=_identity)

    def val_dataloader(self) -> DataLoader:
        """One empty item when the corpus has held-out sets (none otherwise): Lightning's
        validation loop then runs on its schedule (`trainer.val_check_interval`, the validation
        a resumed run owes, `trainer.validate`), and `callbacks.MatryoshkaEval` evaluates the
        held-out sets in it, embedding them through the encoder itself."""
        rounds = [None] if self.plan.corpus.val else []
        return DataLoader(rounds, batch_size=None, collate_fn=_identity)

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
        # The checkpoint's position is the batches consumed: what `trained_stage` counts from
        # until this run consumes its own (its loader workers may have drawn some already).
        self._consumed = {"epoch": int(state["epoch"]), "position": int(state["position"])}
        if self.sampler is not None:
            self.sampler.load_state_dict(state)
            self.realised = _realised_from_state(state)


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
