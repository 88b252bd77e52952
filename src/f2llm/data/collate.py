"""Turn a batch of records into length-packed token chunks for one forward pass."""

from __future__ import annotations

from collections.abc import Sequence

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
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    chunks: list[dict[str, Tensor]] = []
    padding = 0
    start = 0
    while start < len(order):
        # Sorted ascending, so the chunk's last sequence sets its padded width.
        end = start + 1
        while end < len(order) and (end - start + 1) * len(token_ids[order[end]]) <= max_tokens:
            end += 1
        idx = order[start:end]
        width = len(token_ids[idx[-1]])
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq = token_ids[i]
            ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        padding += int((mask == 0).sum())
        chunks.append({"input_ids": ids, "attention_mask": mask})
        start = end
    restore = torch.empty(len(order), dtype=torch.long)
    restore[torch.as_tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return chunks, restore, padding
