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


def split_to_count(chunks: Sequence[dict[str, Tensor]], count: int, pad_id: int
                   ) -> list[dict[str, Tensor]]:
    """`chunks` cut into exactly `count` chunks, in the same concatenated row order.

    The chunk with the most rows is halved (each half trimmed to the columns its rows use)
    until there are `count`; past one row per chunk, one-token chunks of `pad_id` are appended.
    Their rows come after every real row, so an index into the concatenated real rows (a
    batch's `restore`) is unchanged. A sharded model needs this: each forward call gathers
    every layer's weights from all ranks, so every rank must make the same number of calls
    whatever its texts' lengths (`Encoder.matched_chunks`).
    """
    out = list(chunks)
    if len(out) > count:
        raise ValueError(f"{len(out)} chunks cannot become {count}")
    while len(out) < count:
        rows = [chunk["input_ids"].shape[0] for chunk in out]
        i = max(range(len(out)), key=lambda j: (rows[j], out[j]["input_ids"].numel()))
        if rows[i] < 2:
            like = out[0]["input_ids"]
            one = torch.ones((1, 1), dtype=like.dtype, device=like.device)
            out.append({"input_ids": one * pad_id,
                        "attention_mask": torch.ones_like(out[0]["attention_mask"][:1, :1])})
            continue
        half = rows[i] // 2
        out[i : i + 1] = [_trimmed(out[i], slice(0, half)), _trimmed(out[i], slice(half, None))]
    return out


def _trimmed(chunk: dict[str, Tensor], rows: slice) -> dict[str, Tensor]:
    """Rows `rows` of a padded chunk, without the columns that are padding in all of them."""
    mask = chunk["attention_mask"][rows]
    used = torch.nonzero(mask.any(0)).flatten()
    first, last = (used[[0, -1]].tolist() if used.numel() else (0, 0))
    columns = slice(first, last + 1)
    return {key: value[rows, columns] for key, value in chunk.items()}
