"""Corpus sources, one module (or package) each: a source turns its files into the corpus that
training reads (`f2llm.data.corpus_io`) and registers its builder under a name
(`@register("<name>")`). A new source is one new file in this folder: every module here is
imported with the package, so a data config can name it in `corpus.source`."""

import importlib
import pkgutil

from f2llm.data.sources.registry import (
    SOURCES,
    UnknownSourceError,
    build_corpus,
    get_source,
    register,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SOURCES", "UnknownSourceError", "build_corpus", "get_source", "register"]
