"""What crosses from the datamodule to the model: one training batch, one evaluation item."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from torch import Tensor


def _chunks_to(chunks: list[dict[str, Tensor]], device: Any, non_blocking: bool
               ) -> list[dict[str, Tensor]]:
    return [{k: v.to(device, non_blocking=non_blocking) for k, v in c.items()} for c in chunks]


@dataclass
class TrainBatch:
    """One sampler batch, tokenized and packed (`model.packing.pack_by_length`).

    The texts are laid out as the queries, their positives, then the hard negatives column by
    column (negative_1 of every query, then negative_2, ...); `restore` puts the concatenated
    chunk outputs back in that order. Everything past `use_inbatch` says where the batch comes
    from: for logs, the realised mix and exact resume.
    """

    chunks: list[dict[str, Tensor]]
    restore: Tensor
    batch_size: int  # queries
    num_negatives: int  # hard negatives per query
    use_inbatch: bool  # the format's in-batch negatives (data.formats)
    format: str
    dataset: str
    language: str
    group: str
    indices: np.ndarray  # this rank's rows of the dataset's table
    stage: str
    epoch: int
    position: int  # the sampler position of this batch
    num_tokens: int  # real tokens, all texts
    num_padding: int  # pad tokens in the chunks

    def to(self, device: Any, non_blocking: bool = False) -> TrainBatch:
        """The batch with its tensors on `device` (Lightning calls this to move a batch)."""
        return replace(self, chunks=_chunks_to(self.chunks, device, non_blocking),
                       restore=self.restore.to(device, non_blocking=non_blocking))

    def split(self, emb: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Queries [B, D], positives [B, D] and negatives [B, K, D] (None when K = 0) of the
        batch's embeddings `emb` [B * (2 + K), D], in the layout above."""
        return split_embeddings(emb, self.batch_size, self.num_negatives)

    def where(self) -> str:
        """Where the batch sits, for a log line."""
        return (f"dataset {self.dataset}, language {self.language}, group {self.group}, "
                f"epoch {self.epoch}, position {self.position}")


def split_embeddings(emb: Tensor, batch_size: int, num_negatives: int
                     ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Queries, positives and negatives of embeddings in `TrainBatch`'s layout."""
    b, k = batch_size, num_negatives
    negatives = emb[2 * b :].view(k, b, -1).transpose(0, 1) if k else None
    return emb[:b], emb[b : 2 * b], negatives


@dataclass
class EvalBatch:
    """Held-out texts of one set (`side`, e.g. "bitext/source"), rows `rows` of it, packed."""

    chunks: list[dict[str, Tensor]]
    restore: Tensor
    rows: list[int]
    side: str

    def to(self, device: Any, non_blocking: bool = False) -> EvalBatch:
        return replace(self, chunks=_chunks_to(self.chunks, device, non_blocking),
                       restore=self.restore.to(device, non_blocking=non_blocking))
