"""Matryoshka representation learning: nested dims, their weights, the weighted loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def matryoshka_dims(hidden_size: int, min_dim: int = 8) -> list[int]:
    """`hidden_size` and every power of two from `min_dim` below it, descending."""
    if min_dim <= 0 or min_dim & (min_dim - 1):
        raise ValueError(f"min_dim must be a positive power of two, got {min_dim}")
    if hidden_size <= 0:
        raise ValueError(f"hidden_size must be positive, got {hidden_size}")
    dims = [hidden_size]
    dim = min_dim
    while dim < hidden_size:
        dims.append(dim)
        dim *= 2
    return sorted(dims, reverse=True)


def check_matryoshka(dims: Sequence[int] | None, weights: Sequence[float] | None,
                     hidden_size: int | None = None) -> None:
    """A ValueError for explicit Matryoshka settings that cannot work: weights without dims of
    the same length (they pair by position), or dims above the embedding width."""
    if weights is not None and (dims is None or len(weights) != len(dims)):
        raise ValueError(f"mrl_weights has {len(weights)} values for "
                         f"{'no' if dims is None else len(dims)} mrl_dims (they pair by "
                         "position)")
    if dims and hidden_size is not None:
        too_wide = [int(d) for d in dims if int(d) > hidden_size]
        if too_wide:
            raise ValueError(f"mrl_dims {list(dims)}: {too_wide} exceed the hidden size "
                             f"{hidden_size}")


def matryoshka_weights(dims: Sequence[int], hidden_size: int) -> list[float]:
    """1 / (n * sqrt(hidden_size / dim)) for the n-th largest dim (1-based).

    Not renormalised. Returned in the order of `dims`, so `zip(dims, weights)`
    pairs them whatever that order is.
    """
    if len(set(dims)) != len(dims):
        raise ValueError(f"dims must be distinct, got {list(dims)}")
    if any(d <= 0 or d > hidden_size for d in dims):
        raise ValueError(f"dims must lie in [1, {hidden_size}], got {list(dims)}")
    rank = {d: n for n, d in enumerate(sorted(dims, reverse=True), start=1)}
    return [1.0 / (rank[d] * math.sqrt(hidden_size / d)) for d in dims]


def matryoshka_loss(
    loss_fn: Callable[..., Tensor],
    embeddings: Sequence[Tensor],
    dims: Sequence[int],
    weights: Sequence[float],
) -> tuple[Tensor, dict[int, Tensor]]:
    """Weighted sum over `dims` of `loss_fn` on the first `dim` features of each input.

    `loss_fn` must normalise: a prefix of a unit vector is not a unit vector.
    Returns the total (not renormalised) and the unweighted, detached loss per dim.
    """
    if not dims or len(dims) != len(weights):
        raise ValueError(
            f"need one weight per dim, got {len(dims)} dims and {len(weights)} weights"
        )
    width = min(x.shape[-1] for x in embeddings)
    if max(dims) > width:
        raise ValueError(f"Matryoshka dim {max(dims)} exceeds embedding width {width}")
    # Slices of the one full-width forward: no re-encoding per dim.
    losses = [loss_fn(*(x[..., :dim] for x in embeddings)) for dim in dims]
    total = torch.stack(
        [w * loss for w, loss in zip(weights, losses, strict=True)]
    ).sum()
    return total, {dim: loss.detach() for dim, loss in zip(dims, losses, strict=True)}
