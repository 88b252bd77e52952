"""Bitext retrieval accuracy: find each sentence's translation among a language's pool."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


def bitext_accuracy_directions(source: Tensor, target: Tensor) -> tuple[float, float]:
    """(source->target, target->source) top-1 accuracy by cosine; row i of each is a pair."""
    s, t = F.normalize(source.float(), dim=-1), F.normalize(target.float(), dim=-1)
    scores = s @ t.T
    gold = torch.arange(len(s))
    forward = (scores.argmax(1) == gold).float().mean()
    backward = (scores.argmax(0) == gold).float().mean()
    return float(forward), float(backward)


def bitext_accuracy(source: Tensor, target: Tensor) -> float:
    """Mean of source->target and target->source top-1 accuracy; row i of each is a pair."""
    forward, backward = bitext_accuracy_directions(source, target)
    return (forward + backward) / 2


def bitext_scores(source: Tensor, target: Tensor, dims: Sequence[int]) -> dict[str, float]:
    """Accuracy both ways and their mean per dim, one pool, keyed `accuracy_s2t@<dim>`,
    `accuracy_t2s@<dim>`, `accuracy@<dim>`; raw embeddings are truncated, then normalised."""
    out: dict[str, float] = {}
    for dim in dims:
        forward, backward = bitext_accuracy_directions(source[:, :dim], target[:, :dim])
        out[f"accuracy_s2t@{dim}"] = forward
        out[f"accuracy_t2s@{dim}"] = backward
        out[f"accuracy@{dim}"] = (forward + backward) / 2
    return out


def bitext_accuracy_by_dim(
    source: Tensor, target: Tensor, languages: Sequence[str], dims: Sequence[int]
) -> dict[int, dict[str, float]]:
    """Accuracy per Matryoshka dim and language (pools are per language), from full-width
    raw embeddings: truncate, then normalise, as at training time."""
    groups: dict[str, list[int]] = {}
    for i, lang in enumerate(languages):
        groups.setdefault(lang, []).append(i)
    result: dict[int, dict[str, float]] = {}
    for dim in dims:
        result[dim] = {
            lang: bitext_accuracy(source[idx, :dim], target[idx, :dim])
            for lang, idx in sorted(groups.items())
        }
    return result


def mean_over_languages(per_language: dict[str, float]) -> float:
    return sum(per_language.values()) / len(per_language)
