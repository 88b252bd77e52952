"""The held-out tasks, one file each in this folder (mteb's habit): a new task is a new file
whose `HeldoutTask` subclass is `@register`ed. Every module here is imported on first use, so
`MatryoshkaEval` and `eval.py` both run whatever tasks the corpus has sets for."""

import importlib
import pkgutil

from f2llm.evaluation.tasks.base import TASKS, HeldoutTask, Table, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TASKS", "HeldoutTask", "Table", "register"]
