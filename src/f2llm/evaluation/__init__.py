"""Held-out evaluation tasks and metrics, each scored at every Matryoshka dim.

The mteb wrapper lives in `f2llm.evaluation.mteb_wrapper` (it needs the optional `mteb` package).
"""

from f2llm.evaluation.bitext import (
    bitext_accuracy,
    bitext_accuracy_by_dim,
    bitext_accuracy_directions,
    bitext_scores,
    mean_over_languages,
)
from f2llm.evaluation.classification import (
    linear_probe_accuracy,
    nearest_label_accuracy,
    two_way_accuracy,
)
from f2llm.evaluation.clustering import clustering_scores, kmeans_v_measure
from f2llm.evaluation.figure import (
    figure_to_array,
    matryoshka_figure,
    save_figure,
    scores_by_dim,
)
from f2llm.evaluation.retrieval import retrieval_scores

__all__ = [
    "bitext_accuracy",
    "bitext_accuracy_by_dim",
    "bitext_accuracy_directions",
    "bitext_scores",
    "clustering_scores",
    "figure_to_array",
    "kmeans_v_measure",
    "linear_probe_accuracy",
    "matryoshka_figure",
    "mean_over_languages",
    "nearest_label_accuracy",
    "retrieval_scores",
    "save_figure",
    "scores_by_dim",
    "two_way_accuracy",
]
