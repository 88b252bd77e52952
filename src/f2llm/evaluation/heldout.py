"""The held-out tasks of a run (`f2llm.evaluation.tasks`), scored at every Matryoshka dim.

`MatryoshkaEval` (during training) and `eval.py` (afterwards) both go through here: the text
sets to embed come from `heldout_sets`, the metrics from `score_heldout`, for every registered
task whose held-out set the corpus has.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
from torch import Tensor

from f2llm.evaluation.tasks import TASKS, HeldoutTask, Table

if TYPE_CHECKING:
    from f2llm.data.corpus import Corpus

log = logging.getLogger(__name__)


def main_metrics() -> dict[str, str]:
    """Task name -> the metric it is summarised by (the figure's lines, the progress bar)."""
    return {task.name: task.main_metric for task in TASKS.values()}


def read_val_sets(corpus: Corpus) -> dict[str, Table]:
    """Every held-out set of `corpus`, read into columns."""
    unread = sorted(set(corpus.val) - {task.val_set for task in TASKS.values()})
    if unread:
        log.warning("held-out sets %s: no task reads them (tasks: %s)", unread, sorted(TASKS))
    return {name: pq.read_table(path).to_pydict() for name, path in corpus.val.items()}


def _tasks(val_sets: Mapping[str, Table]) -> list[HeldoutTask]:
    return [task for task in TASKS.values() if task.val_set in val_sets]


def heldout_sets(val_sets: Mapping[str, Table], corpus: Corpus
                 ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(set name -> texts, set name -> the training format whose instruction its queries get)
    for every task the held-out sets serve."""
    texts: dict[str, list[str]] = {}
    instructed: dict[str, str] = {}
    for task in _tasks(val_sets):
        texts |= task.texts(val_sets[task.val_set], corpus)
        instructed |= task.instructed
    return texts, instructed


def score_heldout(
    embeddings: Mapping[str, Tensor],
    val_sets: Mapping[str, Table],
    dims: Sequence[int],
) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics named `<task>/<metric>@<dim>` plus each task's main `<task>/<metric>` at full
    width, each task's details such as bitext's per-language table) for every task whose sets
    were embedded."""
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    full = max(dims)
    for task in _tasks(val_sets):
        if not all(name in embeddings for name in task.sets):
            continue
        scores, detail = task.score(embeddings, val_sets[task.val_set], dims)
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
