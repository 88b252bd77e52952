"""Errors a user can fix from the message alone, and how the entry points report them.

`train.py` and `eval.py` print a `UserError` as one paragraph on stderr and exit with status 1;
with `HYDRA_FULL_ERROR=1` the exception propagates and Hydra shows the whole stack.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A setting, path or file the user can fix; the message names it and what to do."""


class NotFound(UserError, FileNotFoundError):
    """A checkpoint, model or run folder that is not where a setting points."""


class DamagedFile(UserError):
    """A file that exists but cannot be read (truncated, not what its name says)."""


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"  # as Hydra reads it


def user_error(err: BaseException) -> UserError | None:
    """`err` or the `UserError` it was raised `from` (Hydra's `instantiate` wraps what a target
    raises in an `InstantiationException`). Only explicit causes: an error raised while handling
    a `UserError` is a bug of its own."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None


@contextmanager
def one_message(exit_status: int = 1) -> Iterator[None]:
    """Report a `UserError` raised in the block as `Error: <message>` and exit."""
    try:
        yield
    except Exception as raised:
        err = user_error(raised)
        if err is None or _full_error():
            raise
        # The run folder's log file records why the run stopped; the console gets it once.
        record = logging.LogRecord("f2llm", logging.ERROR, __file__, 0, "stopped: %s", (err,),
                                   None)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        sys.stderr.write(f"Error: {err}\n")
        sys.stderr.flush()
        raise SystemExit(exit_status) from None
