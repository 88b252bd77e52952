"""A held-out task: the text sets it embeds, which of them get an instruction, its scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

if TYPE_CHECKING:
    from f2llm.data.corpus import Corpus

# A held-out set as read from its parquet: column -> values.
Table = Mapping[str, list]


class HeldoutTask:
    """Subclass, set the attributes, implement `texts` and `score`, and `@register` it.

    - `name`: the metrics' prefix (`val/<name>/<metric>@<dim>`);
    - `val_set`: the `Corpus.val` entry it reads (the task is skipped when the corpus has none);
      unset, the task's `name` (a subclass inherits its parent's);
    - `sets`: the names of the text sets it embeds, e.g. "bitext/source" (tasks naming the same
      set share its embeddings);
    - `instructed`: set name -> training format whose dataset's instruction that set's texts
      get as queries when instructions are on (stage 2); other sets are embedded as documents;
    - `main_metric`: the metric the figure and `val/<name>/<metric>` (full width) report.
    """

    name: str
    val_set: str | None = None
    sets: tuple[str, ...]
    instructed: ClassVar[Mapping[str, str]] = {}
    main_metric: str

    def texts(self, table: Table, corpus: Corpus) -> dict[str, list[str]]:
        """Each of `sets`' texts."""
        raise NotImplementedError

    def score(self, embeddings: Mapping[str, Tensor], table: Table, dims: Sequence[int]
              ) -> tuple[dict[str, float], Any]:
        """(`<metric>@<dim>` -> value, details or None) from the embedded `sets`."""
        raise NotImplementedError


TASKS: dict[str, HeldoutTask] = {}


def register(cls: type[HeldoutTask]) -> type[HeldoutTask]:
    """Class decorator: add the task to `TASKS` under its `name`."""
    if cls.val_set is None:
        cls.val_set = cls.name
    task = cls()
    if task.name in TASKS and type(TASKS[task.name]) is not cls:
        raise ValueError(f"two held-out tasks named {task.name!r}: {type(TASKS[task.name])} "
                         f"and {cls}")
    TASKS[task.name] = task
    return cls
