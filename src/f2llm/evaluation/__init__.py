"""Held-out evaluation tasks and metrics."""

from f2llm.evaluation.bitext import (
    bitext_accuracy,
    bitext_accuracy_by_dim,
    mean_over_languages,
)

__all__ = ["bitext_accuracy", "bitext_accuracy_by_dim", "mean_over_languages"]
