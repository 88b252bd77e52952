"""The held-out tasks of a run, scored at every Matryoshka dim from embedded text sets.

Embedded sets are named as in `data.datamodule.EvalTexts`: "bitext/source", "bitext/target",
"clustering/text", "classification/text", "classification/labels". Four tasks come out:

- bitext: find each sentence's translation in its language's pool (both directions);
- retrieval: an English message retrieves its translations, pooled over all languages
  (every translation is relevant): nDCG@10, MRR@10, Recall@1/5/10;
- clustering: k-means per language, V-measure against the software component;
- classification: country or language name, by the nearer label embedding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from f2llm.evaluation.bitext import bitext_accuracy_by_dim, mean_over_languages
from f2llm.evaluation.classification import nearest_label_accuracy
from f2llm.evaluation.clustering import clustering_scores
from f2llm.evaluation.retrieval import retrieval_scores

# The metric each task is summarised by (the figure's lines, the progress bar).
MAIN_METRIC = {"bitext": "accuracy", "retrieval": "ndcg_at_10", "clustering": "v_measure",
               "classification": "accuracy"}


def translation_qrels(sources: Sequence[str], max_queries: int | None = 1000, seed: int = 0
                      ) -> tuple[list[int], dict[int, set[int]]]:
    """Queries (row of the first occurrence of each English source) and, for query i, the rows
    of every translation of the same source."""
    rows: dict[str, list[int]] = {}
    for i, text in enumerate(sources):
        rows.setdefault(text, []).append(i)
    keys = sorted(rows)
    if max_queries is not None and len(keys) > max_queries:
        chosen = np.random.default_rng(seed).permutation(len(keys))[:max_queries]
        keys = [keys[i] for i in sorted(chosen)]
    queries = [rows[k][0] for k in keys]
    return queries, {q: set(rows[k]) for q, k in enumerate(keys)}


def score_heldout(
    embeddings: Mapping[str, Tensor],
    val_sets: Mapping[str, Mapping[str, list]],
    dims: Sequence[int],
) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics named `<task>/<metric>@<dim>` plus `<task>/<metric>` at full width,
    per-language details) for whichever sets were embedded."""
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    full = max(dims)
    if "bitext/source" in embeddings and "bitext" in val_sets:
        bitext = val_sets["bitext"]
        source, target = embeddings["bitext/source"], embeddings["bitext/target"]
        per_language = bitext_accuracy_by_dim(source, target, bitext["language"], dims)
        details["bitext"] = per_language
        metrics |= {f"bitext/accuracy@{d}": mean_over_languages(v)
                    for d, v in per_language.items()}
        queries, relevant = translation_qrels(bitext["source"])
        scores = retrieval_scores(source[queries], target, relevant, dims)
        metrics |= {f"retrieval/{k}": v for k, v in scores.items()}
    if "clustering/text" in embeddings and "clustering" in val_sets:
        clusters = val_sets["clustering"]
        scores = clustering_scores(embeddings["clustering/text"], clusters["label"], dims,
                                   groups=clusters["language"])
        metrics |= {f"clustering/{k}": v for k, v in scores.items()}
    if "classification/text" in embeddings and "classification" in val_sets:
        names = val_sets["classification"]
        scores = nearest_label_accuracy(embeddings["classification/text"],
                                        embeddings["classification/labels"],
                                        torch.as_tensor(names["label"]), dims)
        metrics |= {f"classification/{k}": v for k, v in scores.items()}
    for task, metric in MAIN_METRIC.items():
        if f"{task}/{metric}@{full}" in metrics:
            metrics[f"{task}/{metric}"] = metrics[f"{task}/{metric}@{full}"]
    return metrics, details


def curves(metrics: Mapping[str, float]) -> dict[str, dict[int, float]]:
    """Each task's main metric by dim: the Matryoshka figure's lines."""
    out: dict[str, dict[int, float]] = {}
    for name, value in metrics.items():
        task, _, rest = name.partition("/")
        metric, at, dim = rest.partition("@")
        if at and MAIN_METRIC.get(task) == metric:
            out.setdefault(f"{task} ({metric})", {})[int(dim)] = value
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}
