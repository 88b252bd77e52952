"""Turn a batch of token ids into length-packed chunks for one forward pass."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def pack_by_length(
    token_ids: Sequence[Sequence[int]], pad_id: int, max_tokens: int
) -> tuple[list[dict[str, Tensor]], Tensor, int]:
    """Sort sequences by length and cut them into chunks of at most `max_tokens` padded tokens.

    Returns the chunks, the index that puts the concatenated chunk outputs back in input order,
    and the number of pad tokens. Padding a mixed batch to its longest text wastes most of the
    compute when lengths vary; sorted chunks waste almost none and give the same embeddings.
    """
    lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[order]
    # All ids in sorted order, one flat array: each chunk is filled with one scatter.
    flat = np.fromiter(itertools.chain.from_iterable(token_ids[i] for i in order),
                       dtype=np.int64, count=int(lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(sorted_lengths)])
    chunks: list[dict[str, Tensor]] = []
    padding = 0
    start = 0
    while start < len(order):
        # Sorted ascending, so a chunk's last sequence sets its padded width: the chunk ends
        # before the first sequence whose width times the chunk's count would pass max_tokens.
        rest = sorted_lengths[start:] * np.arange(1, len(order) - start + 1)
        over = np.flatnonzero(rest[1:] > max_tokens)
        end = start + 1 + (int(over[0]) if len(over) else len(order) - start - 1)
        widths = sorted_lengths[start:end]
        width = int(widths[-1])
        mask = np.arange(width) < widths[:, None]
        ids = np.full((end - start, width), pad_id, dtype=np.int64)
        ids[mask] = flat[offsets[start]:offsets[end]]
        padding += mask.size - int(widths.sum())
        chunks.append({"input_ids": torch.from_numpy(ids),
                       "attention_mask": torch.from_numpy(mask.astype(np.int64))})
        start = end
    order = torch.from_numpy(order)
    restore = torch.empty(len(order), dtype=torch.long)
    restore[order] = torch.arange(len(order))
    return chunks, restore, padding
