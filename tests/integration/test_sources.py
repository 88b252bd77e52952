"""A registered corpus source trains by name through `train()` (the registry:
tests/unit/test_sources.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from omegaconf import open_dict

from f2llm.config_checks import check_config
from f2llm.train import train
from tests.conftest import compose_train, tiny_overrides


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
