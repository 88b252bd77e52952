"""Clustering: V-measure of k-means on the embeddings at every Matryoshka dim."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import v_measure_score
from torch import Tensor
from torch.nn import functional as F


def kmeans_v_measure(embeddings: Tensor, labels: Sequence[Hashable], seed: int = 0,
                     n_init: int = 3) -> float:
    """V-measure of k-means (k = number of distinct labels, k-means++ init, `n_init` restarts)
    against `labels`; rows are L2-normalised first, so distances follow cosine similarity."""
    labels = np.asarray(labels)
    k = len(np.unique(labels))
    x = F.normalize(embeddings.float(), dim=-1).numpy()
    kmeans = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed)
    return float(v_measure_score(labels, kmeans.fit_predict(x)))


def clustering_scores(
    embeddings: Tensor,
    labels: Sequence[Hashable],
    dims: Sequence[int],
    groups: Sequence[Hashable] | None = None,
    seed: int = 0,
    n_init: int = 3,
) -> dict[str, float]:
    """V-measure per dim, keyed `v_measure@<dim>`, from raw full-width embeddings.

    With `groups` (e.g. a language per row) each group is clustered on its own and the
    V-measures are averaged over groups.
    """
    labels = np.asarray(labels)
    keys = np.zeros(len(labels), dtype=int) if groups is None else np.asarray(groups)
    rows = [np.flatnonzero(keys == g) for g in np.unique(keys)]
    out: dict[str, float] = {}
    for dim in dims:
        values = [kmeans_v_measure(embeddings[idx, :dim], labels[idx], seed, n_init)
                  for idx in rows]
        out[f"v_measure@{dim}"] = float(np.mean(values))
    return out
