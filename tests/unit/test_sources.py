"""The corpus sources' registry: each data config names a registered source whose builder takes
exactly the config's keys, a name no source has stops the run before any work (a new source
training from `data.corpus.source`: tests/integration/test_sources.py)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from f2llm.config_checks import check_config
from f2llm.data import Corpus, build_corpus
from f2llm.data.sources import SOURCES, UnknownSourceError, register
from tests.conftest import CONFIGS, compose_train, tiny_overrides

BUILT_IN = {"gettext", "manifest", "f2llm_v2"}


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_each_data_config_names_its_registered_source_and_its_arguments(name: str) -> None:
    corpus = OmegaConf.load(CONFIGS / "data" / f"{name}.yaml").corpus
    assert corpus._target_ == "f2llm.data.build_corpus" and corpus._partial_
    assert corpus.source == name and name in SOURCES
    assert SOURCES[name].__module__.startswith(f"f2llm.data.sources.{name}")
    parameters = inspect.signature(SOURCES[name]).parameters
    keys = set(corpus) - {"_target_", "_partial_", "source"}
    assert keys <= set(parameters), keys - set(parameters)  # no dead config keys
    required = {p for p, v in parameters.items() if v.default is inspect.Parameter.empty}
    assert required <= keys


def test_an_unknown_source_stops_before_any_work(tmp_path: Path, locale_dir: Path) -> None:
    message = ("data.corpus.source='gettxt': no such corpus source; sources: "
               + ", ".join(sorted(SOURCES)))
    with pytest.raises(UnknownSourceError) as raised:
        build_corpus("gettxt", locale_dir=str(locale_dir))
    assert str(raised.value) == message
    cfg = compose_train([*tiny_overrides(tmp_path, locale_dir), "data.corpus.source=gettxt"])
    with pytest.raises(UnknownSourceError, match="no such corpus source"):
        check_config(cfg)


def test_two_sources_cannot_share_a_name() -> None:
    def build_other(out_dir: str) -> Corpus:
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="two corpus sources named 'gettext'"):
        register("gettext")(build_other)
    assert SOURCES["gettext"].__name__ == "build_gettext_corpus"
