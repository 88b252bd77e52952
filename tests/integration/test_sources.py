"""A registered corpus source trains by name through `train()` (the registry:
tests/unit/test_sources.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as csv
import pyarrow.parquet as pq
import pytest
from omegaconf import open_dict

from f2llm.config_checks import check_config
from f2llm.data import Corpus, TrainingDataset
from f2llm.data.corpus_io import atomic_write, build_lock, fingerprint, read_json, write_json
from f2llm.data.sources import SOURCES, register
from f2llm.train import train
from tests.conftest import compose_train, tiny_overrides


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


def test_a_registered_source_trains_by_name(tmp_path: Path, locale_dir: Path,
                                            tsv_pairs: None) -> None:
    files = []
    for name, size in (("faq", 40), ("titles", 24)):
        lines = [f"question {i} about {name}\tanswer {i} of {name}" for i in range(size)]
        files.append(tmp_path / f"{name}.tsv")
        files[-1].write_text("\n".join(lines) + "\n")
    gettext_only = ("data.corpus.", "data.stages")
    cfg = compose_train([o for o in tiny_overrides(tmp_path, locale_dir, **{
        "data.num_workers": 0, "trainer.max_steps": 4, "trainer.val_check_interval": 100,
    }) if not o.startswith(gettext_only)])
    with open_dict(cfg):
        cfg.final_validate = False
        cfg.data.stages = None
        cfg.data.corpus = {"_target_": "f2llm.data.build_corpus", "_partial_": True,
                           "source": "tsv_pairs", "files": [str(f) for f in files],
                           "out_dir": str(tmp_path / "data" / "tsv_pairs"), "language": "de"}
    check_config(cfg)
    train(cfg)
    mix = json.loads((Path(cfg.paths.output_dir) / "data_mix.json").read_text())
    assert set(mix["by_dataset"]) == {"faq", "titles"} and set(mix["by_language"]) == {"de"}
    built = pq.read_table(tmp_path / "data" / "tsv_pairs" / "faq.parquet")
    assert built.num_rows == 40
    assert all(q.split()[1] != n.split()[1] for q, n in zip(
        built["query"].to_pylist(), built["negative_1"].to_pylist(), strict=True))
