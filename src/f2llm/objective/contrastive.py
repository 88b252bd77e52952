"""InfoNCE: hard negatives per query, in-batch negatives over the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def cosine_logits(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """Cosine similarity of rows of `a` [B, D] and `b` [N, D], over `tau`: [B, N]."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau


def hard_negative_loss(
    query: Tensor, positive: Tensor, negatives: Tensor, tau: float = 0.05,
    mask: Tensor | None = None,
) -> Tensor:
    """Cross-entropy of each query over [its positive, its own K negatives]; mean.

    Shapes: query [B, D], positive [B, D], negatives [B, K, D]. Raw embeddings,
    normalised here. `mask` [B, 1 + K] (True: drop) takes candidates out of the softmax
    (`objective.false_negatives`).
    """
    if negatives.dim() != 3 or negatives.shape[0] != query.shape[0]:
        raise ValueError(
            f"negatives must be [B, K, D] with B={query.shape[0]}, "
            f"got {tuple(negatives.shape)}"
        )
    candidates = F.normalize(
        torch.cat([positive.unsqueeze(1), negatives], dim=1), dim=-1
    )
    logits = torch.einsum("bd,bkd->bk", F.normalize(query, dim=-1), candidates) / tau
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    # The positive sits in column 0 of every row.
    labels = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, labels)


def _world_size(gather: bool) -> int:
    if not gather or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size()


def gather_rows(rows: Tensor) -> tuple[Tensor, int]:
    """Every rank's `rows`, in rank order, and where this rank's rows start (the layout of
    `inbatch_loss`'s candidates); differentiable when `rows` requires grad. One process:
    `rows` and 0."""
    if _world_size(True) == 1:
        return rows, 0
    if rows.requires_grad:
        return _gather_positives(rows)
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([rows.shape[0]], device=rows.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(n) for n in torch.cat(sizes).tolist()]
    largest = max(counts)
    padded = F.pad(rows, (0, 0) * (rows.dim() - 1) + (0, largest - rows.shape[0]))
    shares = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(shares, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(shares, counts, strict=True)]), sum(counts[:rank])


def _gather_positives(positive: Tensor) -> tuple[Tensor, int]:
    """Every rank's positives, in rank order, and where this rank's rows start.

    Ranks may hold different numbers of rows (an exhaustive epoch splits a batch into shares
    that differ by one): the sizes are gathered first, every share is padded to the largest,
    and the padding is cut off again after the gather.
    """
    # The autograd all_gather returns each rank's gradient for the other ranks' positives to
    # their owners; the plain collective would cut those terms off.
    from torch.distributed.nn.functional import all_gather

    world, rank = dist.get_world_size(), dist.get_rank()
    # The sizes cost a small collective and, on a GPU, a host sync per call: shapes cannot
    # stay on the device.
    size = torch.tensor([positive.shape[0]], device=positive.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(n) for n in torch.cat(sizes).tolist()]
    offset = sum(counts[:rank])
    largest = max(counts)
    if all(n == largest for n in counts):
        return torch.cat(all_gather(positive), dim=0), offset
    # Zero rows pad the tensor only for the collective; slicing them off below keeps them out
    # of the logits, and the pad's backward passes only the real rows' gradient.
    padded = F.pad(positive, (0, 0, 0, largest - positive.shape[0]))
    shares = all_gather(padded)
    return torch.cat([p[:n] for p, n in zip(shares, counts, strict=True)], dim=0), offset


def inbatch_loss(
    query: Tensor, positive: Tensor, tau: float = 0.05, gather: bool = True,
    mask: Tensor | None = None,
) -> Tensor:
    """Cross-entropy of each local query over all positives of the global batch; mean.

    Shapes: query [B, D], positive [B, D]. Raw embeddings, normalised here. With
    `gather` under torch.distributed, B may differ between ranks; each rank's loss is the
    mean over its own B queries, so under DDP's gradient average the queries of a rank with
    fewer of them weigh a little more than in one process on the whole batch. `mask`
    [B, global B] (True: drop) takes candidates out of the softmax, in the gathered order.
    """
    batch = query.shape[0]
    offset = 0
    if _world_size(gather) > 1:
        positive, offset = _gather_positives(positive)
    logits = cosine_logits(query, positive, tau)
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    labels = torch.arange(offset, offset + batch, device=query.device)
    return F.cross_entropy(logits, labels)
