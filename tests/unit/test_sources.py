"""The corpus sources' registry: each data config names a registered source whose builder takes
exactly the config's keys, a name no source has stops the run before any work (a new source
training from `data.corpus.source`: tests/integration/test_sources.py)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as csv
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from f2llm.config_checks import check_config
from f2llm.data import Corpus, TrainingDataset, build_corpus
from f2llm.data.corpus_io import atomic_write, build_lock, fingerprint, read_json, write_json
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


# A new source as a user adds one (one file under f2llm/data/sources/ in practice): a TSV of
# `query<TAB>passage` lines per dataset, negatives the passages of other lines.
def build_tsv_pairs_corpus(files: Sequence[str], out_dir: str, language: str = "en",
                           num_negatives: int = 1, seed: int = 0) -> Corpus:
    paths = [Path(f).resolve() for f in files]
    out = Path(out_dir)
    key = fingerprint({"files": [[str(p), p.stat().st_size, p.stat().st_mtime_ns]
                                 for p in paths],
                       "language": language, "num_negatives": num_negatives, "seed": seed})
    train_sets = [TrainingDataset(p.stem, out / f"{p.stem}.parquet", "retrieval")
                  for p in paths]
    with build_lock(out):
        if (read_json(out / "built.json") or {}).get("fingerprint") != key:
            rng = np.random.default_rng(seed)
            for path, dataset in zip(paths, train_sets, strict=True):
                table = csv.read_csv(path, csv.ReadOptions(column_names=["query", "passage"]),
                                     csv.ParseOptions(delimiter="\t", quote_char=False))
                n = table.num_rows
                columns = {"query": table["query"], "passage": table["passage"],
                           "language": pa.repeat(language, n)}
                for j in range(1, num_negatives + 1):
                    other = (np.arange(n) + rng.integers(1, n, n)) % n  # never the line itself
                    columns[f"negative_{j}"] = table["passage"].take(other)
                with atomic_write(dataset.path) as tmp:
                    pq.write_table(pa.table(columns), tmp)
            write_json(out / "built.json", {"fingerprint": key})
    return Corpus(train_sets)


@pytest.fixture
def tsv_pairs() -> Iterator[None]:
    register("tsv_pairs")(build_tsv_pairs_corpus)
    yield
    del SOURCES["tsv_pairs"]


