"""Every experiment file composes and instantiates its parts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from tests.conftest import CONFIGS, compose_train, tiny_overrides

EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment: str, tmp_path: Path,
                                              locale_dir: Path) -> None:
    overrides = tiny_overrides(tmp_path, locale_dir)
    if experiment.startswith("f2llm_v2"):  # the public data: a folder instead of gettext
        overrides = [o for o in overrides if not o.startswith("data.corpus.")]
        overrides.append(f"data.corpus.root={tmp_path}")
    cfg = compose_train(overrides, experiment=experiment)
    assert cfg.trainer.max_steps == 4
    instantiate(cfg.objective)
    instantiate(cfg.optimizer)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c]
    assert callbacks
    data = instantiate(cfg.data)
    assert data.batch_size > 0
