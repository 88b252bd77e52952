"""Corpus sources by name. A source is a function that turns its files into a `Corpus` (built
once under its output folder, `corpus_io`), registered with `@register("<name>")`; a data
config picks one with `corpus.source: <name>`, its other `corpus` keys being the function's
arguments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from f2llm.data.corpus import Corpus
from f2llm.errors import UserError

Source = Callable[..., Corpus]
SOURCES: dict[str, Source] = {}


class UnknownSourceError(UserError, ValueError):
    """`data.corpus.source` names no registered source."""


def register(name: str) -> Callable[[Source], Source]:
    """Function decorator: add the source to `SOURCES` under `name`."""
    def add(build: Source) -> Source:
        where = f"{build.__module__}.{build.__qualname__}"
        known = SOURCES.get(name)
        # The same function again (its module imported twice) replaces itself.
        if known is not None and f"{known.__module__}.{known.__qualname__}" != where:
            raise ValueError(f"two corpus sources named {name!r}: {known.__module__}."
                             f"{known.__qualname__} and {where}")
        SOURCES[name] = build
        return build
    return add


def get_source(name: str) -> Source:
    """The source registered as `name`; an `UnknownSourceError` naming the registered ones."""
    if name not in SOURCES:
        raise UnknownSourceError(f"data.corpus.source={name!r}: no such corpus source; sources: "
                                 f"{', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def build_corpus(source: str, **options: Any) -> Corpus:
    """The `Corpus` of the source registered as `source`, built (or reused) with `options`:
    what a data config's `corpus` calls (`_partial_: true`, the datamodule calls it)."""
    return get_source(source)(**options)
