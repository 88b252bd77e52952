"""What crosses from the datamodule to the model: one training batch."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
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
    # One key per positive and negative (`text_keys`), in the layout above without the
    # queries: for the same-text false-negative rule. None: the batch was built without them.
    keys: Tensor | None = None

    def to(self, device: Any, non_blocking: bool = False) -> TrainBatch:
        """The batch with its tensors on `device` (Lightning calls this to move a batch)."""
        keys = None if self.keys is None else self.keys.to(device, non_blocking=non_blocking)
        return replace(self, chunks=_chunks_to(self.chunks, device, non_blocking),
                       restore=self.restore.to(device, non_blocking=non_blocking), keys=keys)

    def candidate_keys(self) -> tuple[Tensor, Tensor | None]:
        """The positives' keys [B] and the negatives' [B, K] (None when K = 0)."""
        if self.keys is None:
            raise ValueError("this batch has no text keys (TrainBatch.keys), which the "
                             "same-text false-negative rule needs")
        b, k = self.batch_size, self.num_negatives
        negatives = self.keys[b:].view(k, b).T if k else None
        return self.keys[:b], negatives

    def split(self, emb: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Queries [B, D], positives [B, D] and negatives [B, K, D] (None when K = 0) of the
        batch's embeddings `emb` [B * (2 + K), D], in the layout above."""
        return split_embeddings(emb, self.batch_size, self.num_negatives)

    def where(self) -> str:
        """Where the batch sits, for a log line."""
        return (f"dataset {self.dataset}, language {self.language}, group {self.group}, "
                f"epoch {self.epoch}, position {self.position}")


def text_keys(token_ids: Sequence[Sequence[int]]) -> Tensor:
    """One int64 key per text: 8 bytes of BLAKE2b over its token ids.

    Equal keys mean equal token ids after truncation, which is what the model sees (and all a
    pre-tokenized dataset has); a collision of two different texts has odds ~2^-64 per pair.
    """
    digests = [hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8)
               .digest() for ids in token_ids]
    return torch.tensor([int.from_bytes(d, "little", signed=True) for d in digests],
                        dtype=torch.int64)


def split_embeddings(emb: Tensor, batch_size: int, num_negatives: int
                     ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Queries, positives and negatives of embeddings in `TrainBatch`'s layout (text first:
    [N, D], or [N, 1 + layers, D] for `Encoder.forward(layers=...)`)."""
    b, k = batch_size, num_negatives
    negatives = emb[2 * b :].view(k, b, *emb.shape[1:]).transpose(0, 1) if k else None
    return emb[:b], emb[b : 2 * b], negatives

