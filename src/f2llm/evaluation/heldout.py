"""The held-out tasks of a corpus (`f2llm.evaluation.tasks`), scored at every Matryoshka dim.

`HeldoutEvaluator` owns the held-out sets and the tasks that read them; given a model it
embeds every set and returns the scores (sentence-transformers' `SentenceEvaluator` habit).
`MatryoshkaEval` (during training) and `eval.py` (afterwards) both call it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
from torch import Tensor

from f2llm.evaluation.tasks import TASKS, Table
from f2llm.objective.matryoshka import matryoshka_dims

if TYPE_CHECKING:
    from f2llm.data.corpus import Corpus, TrainingDataset
    from f2llm.evaluation.embedders import Embedder

log = logging.getLogger(__name__)


def main_metrics() -> dict[str, str]:
    """Task name -> the metric it is summarised by (the figure's lines, the progress bar)."""
    return {task.name: task.main_metric for task in TASKS.values()}


@dataclass(frozen=True)
class HeldoutScores:
    """One evaluation: `metrics` named `<task>/<metric>@<dim>` plus each task's main
    `<task>/<metric>` at full width; `details` per task (bitext's per-language table);
    `instructed` the sets whose texts were embedded as instructed queries."""

    metrics: dict[str, float]
    details: dict[str, Any]
    instructed: tuple[str, ...]


class HeldoutEvaluator:
    """Every registered task whose held-out set `corpus` has, read once.

    `sets` maps each text set to embed (e.g. "bitext/source") to its texts; `queries` maps the
    sets whose texts are queries to the training dataset whose instruction they get when the
    evaluation is instructed (a task's `instructed` format, resolved through
    `Corpus.dataset_of_format`). Nothing changes between calls.
    """

    def __init__(self, corpus: Corpus) -> None:
        unread = sorted(set(corpus.val) - {task.val_set for task in TASKS.values()})
        if unread:
            log.warning("held-out sets %s: no task reads them (tasks: %s)", unread, sorted(TASKS))
        self.tables: dict[str, Table] = {name: pq.read_table(path).to_pydict()
                                         for name, path in corpus.val.items()}
        self.tasks = [task for task in TASKS.values() if task.val_set in self.tables]
        self.sets: dict[str, list[str]] = {}
        instructed: dict[str, str] = {}
        for task in self.tasks:
            self.sets |= task.texts(self.tables[task.val_set], corpus)
            instructed |= task.instructed
        by_format = corpus.dataset_of_format()
        self.queries: dict[str, TrainingDataset] = {
            name: by_format[fmt] for name, fmt in instructed.items()
            if name in self.sets and fmt in by_format}

    def __call__(self, model: Embedder, dims: Sequence[int] | None = None,
                 instructed: bool = True) -> HeldoutScores:
        """Embed every set through `model` (queries with their dataset's instruction when
        `instructed`) and score every task at each of `dims` (None: every power of two from 8
        below the model's width, and the width)."""
        dims = list(dims) if dims else matryoshka_dims(model.width)
        queries = self.queries if instructed else {}
        # An empty set is not embedded; the tasks that read it are skipped.
        embeddings = {name: model.embed(texts, queries.get(name))
                      for name, texts in self.sets.items() if texts}
        metrics, details = self._score(embeddings, dims)
        return HeldoutScores(metrics, details, tuple(sorted(queries)))

    def _score(self, embeddings: Mapping[str, Tensor], dims: Sequence[int]
               ) -> tuple[dict[str, float], dict[str, Any]]:
        metrics: dict[str, float] = {}
        details: dict[str, Any] = {}
        full = max(dims)
        for task in self.tasks:
            if not all(name in embeddings for name in task.sets):
                continue
            scores, detail = task.score(embeddings, self.tables[task.val_set], dims)
            metrics |= {f"{task.name}/{k}": v for k, v in scores.items()}
            if detail is not None:
                details[task.name] = detail
            main = f"{task.name}/{task.main_metric}"
            if f"{main}@{full}" in metrics:
                metrics[main] = metrics[f"{main}@{full}"]
        return metrics, details


def curves(metrics: Mapping[str, float]) -> dict[str, dict[int, float]]:
    """Each task's main metric by dim: the Matryoshka figure's lines."""
    main = main_metrics()
    out: dict[str, dict[int, float]] = {}
    for name, value in metrics.items():
        task, _, rest = name.partition("/")
        metric, at, dim = rest.partition("@")
        if at and main.get(task) == metric:
            out.setdefault(f"{task} ({metric})", {})[int(dim)] = value
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}
