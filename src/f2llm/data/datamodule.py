"""LightningDataModule: records on disk -> per-group batches -> packed token chunks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from torch.utils.data import DataLoader, Dataset

from f2llm.data.collate import pack_by_length
from f2llm.data.sampler import LanguageTemperatureSampler

log = logging.getLogger(__name__)


def memory_mapped_table(parquet_path: str | Path, cache_dir: str | Path | None = None) -> pa.Table:
    """The parquet file's table, memory-mapped through an Arrow IPC copy next to it (or in
    `cache_dir`), so large corpora are not held in Python lists or copied per worker."""
    src = Path(parquet_path)
    arrow = Path(cache_dir or src.parent) / (src.stem + ".arrow")
    if not arrow.exists() or arrow.stat().st_mtime < src.stat().st_mtime:
        table = pq.read_table(src)
        tmp = arrow.with_suffix(".arrow.tmp")
        arrow.parent.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=64_000)
        tmp.replace(arrow)
    return pa.ipc.open_file(pa.memory_map(str(arrow), "r")).read_all()


def group_rows(table: pa.Table, columns: list[str]) -> dict[str, np.ndarray]:
    """Row indices per distinct value of `columns` (joined with "/"), e.g. "fr/en->xx"."""
    key = table.column(columns[0]).combine_chunks()
    for c in columns[1:]:
        key = pc.binary_join_element_wise(key, table.column(c).combine_chunks(), "/")
    encoded = key.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    names = encoded.dictionary.to_pylist()
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    return {names[i]: order[bounds[i] : bounds[i + 1]] for i in range(len(names))}


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


class RetrievalBatches(Dataset):
    """Item = one batch (a dict of record indices from the sampler) -> tokenized texts."""

    def __init__(
        self,
        table: pa.Table,
        tokenize: Callable[[list[str]], list[list[int]]],
        pad_id: int,
        num_negatives: int,
        max_tokens_per_chunk: int,
        instruction: str | None,
        format_query: Callable[[str, str | None], str],
        dataset_name: str,
    ) -> None:
        self.table = table
        self.tokenize = tokenize
        self.pad_id = pad_id
        self.negative_columns = [f"negative_{j + 1}" for j in range(num_negatives)]
        needed = ["query", "passage", *self.negative_columns]
        missing = [c for c in needed if c not in table.schema.names]
        if missing:
            raise ValueError(f"records lack columns {missing} (have {table.schema.names})")
        self.max_tokens = max_tokens_per_chunk
        self.instruction = instruction
        self.format_query = format_query
        self.dataset_name = dataset_name

    def __len__(self) -> int:  # the sampler decides the length
        raise TypeError("RetrievalBatches is indexed by sampler batches")

    def __getitem__(self, item: Mapping[str, Any]) -> dict[str, Any]:
        rows = take_rows(self.table, np.asarray(item["indices"]),
                         ["query", "passage", *self.negative_columns])
        queries = [self.format_query(q, self.instruction) for q in rows["query"]]
        passages = rows["passage"]
        negatives = [t for c in self.negative_columns for t in rows[c]]
        token_ids = self.tokenize(queries + passages + negatives)
        chunks, restore, padding = pack_by_length(token_ids, self.pad_id, self.max_tokens)
        return {
            "chunks": chunks,
            "restore": restore,
            "batch_size": len(queries),
            "num_negatives": len(self.negative_columns),
            "use_inbatch": True,  # retrieval: in-batch negatives apply
            "dataset": self.dataset_name,
            "group": item["group"],
            "epoch": item["epoch"],
            "position": item["position"],
            "num_tokens": sum(len(t) for t in token_ids),
            "num_padding": padding,
        }


class BitextTexts(Dataset):
    """Validation bitext, both sides, as length-sorted groups of texts (one forward each)."""

    def __init__(
        self,
        bitext: Mapping[str, list[str]],
        tokenize: Callable[[list[str]], list[list[int]]],
        pad_id: int,
        texts_per_item: int = 256,
        max_tokens_per_chunk: int = 8192,
    ) -> None:
        self.tokenize, self.pad_id, self.max_tokens = tokenize, pad_id, max_tokens_per_chunk
        self.items: list[tuple[str, list[int]]] = []
        self.texts = {"source": bitext["source"], "target": bitext["target"]}
        for side, texts in self.texts.items():
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            self.items += [(side, order[i : i + texts_per_item])
                           for i in range(0, len(order), texts_per_item)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        side, rows = self.items[i]
        token_ids = self.tokenize([self.texts[side][r] for r in rows])
        chunks, restore, _ = pack_by_length(token_ids, self.pad_id, self.max_tokens)
        return {"chunks": chunks, "restore": restore, "rows": rows, "side": side}


class _Positioned:
    """Tags each sampler batch with where it sits in the schedule (for exact resume)."""

    def __init__(self, sampler: LanguageTemperatureSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        # The whole epoch: after a resume, Lightning's restored batch counter covers the part
        # already trained on, and the sampler continues from its saved position.
        return len(self.sampler)

    def __iter__(self):
        for item in self.sampler:
            # The sampler has already advanced past this batch.
            epoch, position = self.sampler.epoch, self.sampler.position
            if position == 0:  # it just rolled over to the next epoch
                epoch, position = epoch - 1, self.sampler.batches_per_epoch
            yield {**item, "epoch": epoch, "position": position - 1}


class F2LLMDataModule(L.LightningDataModule):
    """Builds or finds the corpus, groups records by language, serves one-group batches."""

    def __init__(
        self,
        corpus: Callable[[], Mapping[str, str | Path]],
        batch_size: int = 64,
        num_negatives: int = 7,
        alpha: float = 1.0,
        group_by: list[str] | None = None,
        max_length: int | None = None,
        max_tokens_per_chunk: int = 4096,
        instruction: str | None = None,
        dataset_name: str = "gettext_bitext",
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.corpus = corpus
        self.batch_size = batch_size
        self.num_negatives = num_negatives
        self.alpha = alpha
        # Every batch comes from one group; its in-batch negatives are the group's texts.
        self.group_by = list(group_by or ["language"])
        self.max_length = max_length
        self.max_tokens_per_chunk = max_tokens_per_chunk
        self.instruction = instruction
        self.dataset_name = dataset_name
        self.seed = seed
        self.num_workers = num_workers
        self.encoder = None  # set by the entry point: tokenization follows the model
        self.paths: dict[str, Path] = {}
        self.sampler: LanguageTemperatureSampler | None = None
        self._consumed: dict[str, int] | None = None
        self._pending_state: dict[str, int] | None = None

    def attach_encoder(self, encoder: Any) -> None:
        self.encoder = encoder

    def prepare_data(self) -> None:
        self.paths = {k: Path(v) for k, v in self.corpus().items()}

    def setup(self, stage: str | None = None) -> None:
        if not self.paths:
            self.paths = {k: Path(v) for k, v in self.corpus().items()}
        if self.encoder is None:
            raise RuntimeError("call attach_encoder(encoder) before setup: batches are tokenized")
        self.train_table = memory_mapped_table(self.paths["train"])
        self.val_bitext = pq.read_table(self.paths["val_bitext"]).to_pydict()
        groups = group_rows(self.train_table, self.group_by)
        rank = self.trainer.global_rank if self.trainer else 0
        world = self.trainer.world_size if self.trainer else 1
        self.sampler = LanguageTemperatureSampler(
            groups, self.batch_size, self.alpha, self.seed, rank, world
        )
        if self._pending_state is not None:
            self.sampler.load_state_dict(self._pending_state)
        self.group_sizes = {k: len(v) for k, v in groups.items()}
        log.info("train records: %d in %d languages; %d batches per epoch",
                 self.train_table.num_rows, len(groups), len(self.sampler))

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        max_length = self.max_length or self.encoder.max_length
        return self.encoder.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]

    def train_dataloader(self) -> DataLoader:
        dataset = RetrievalBatches(
            self.train_table,
            self._tokenize,
            self.encoder.tokenizer.pad_token_id,
            self.num_negatives,
            self.max_tokens_per_chunk,
            self.instruction,
            self.encoder.format_query,
            self.dataset_name,
        )
        # batch_size=None: the sampler already yields whole batches.
        return DataLoader(dataset, sampler=_Positioned(self.sampler), batch_size=None,
                          num_workers=self.num_workers, collate_fn=_identity)

    def val_dataloader(self) -> DataLoader:
        dataset = BitextTexts(self.val_bitext, self._tokenize, self.encoder.tokenizer.pad_token_id)
        return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=0,
                          collate_fn=_identity)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Called in consumption order (prefetching runs ahead of it): the resume point.
        if isinstance(batch, dict) and "position" in batch:
            self._consumed = {"epoch": batch["epoch"], "position": batch["position"] + 1}
        return batch

    def state_dict(self) -> dict[str, Any]:
        if self.sampler is None:
            return {}
        state = self.sampler.state_dict()
        if self._consumed is not None:
            state.update(self._consumed)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self._pending_state = dict(state)
        if self.sampler is not None:
            self.sampler.load_state_dict(state)


def _identity(batch: Any) -> Any:
    return batch
