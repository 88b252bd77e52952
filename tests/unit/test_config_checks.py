"""Bad settings stop the run at once with one message that names the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import open_dict

from f2llm.config_checks import ConfigError, check_config
from f2llm.errors import UserError
from tests.conftest import ROOT, compose_train, tiny_overrides


@pytest.fixture
def cfg(tmp_path: Path, locale_dir: Path):
    return compose_train(tiny_overrides(tmp_path, locale_dir))


def test_default_config_passes(cfg) -> None:
    check_config(cfg)


def test_mrl_dim_above_hidden_size(cfg) -> None:
    cfg.objective.mrl_dims = [64, 16]  # the test model is 32 wide
    with pytest.raises(ConfigError, match=r"objective.mrl_dims.*\[64\].*hidden size 32"):
        check_config(cfg)


def test_more_hard_negatives_than_stored(cfg) -> None:
    cfg.data.num_negatives.retrieval = 12
    with pytest.raises(ConfigError, match=r"num_negatives.retrieval=12.*stores 7"):
        check_config(cfg)


def test_unknown_format(cfg) -> None:
    with open_dict(cfg):
        cfg.data.num_negatives["ranking"] = 3  # as `+data.num_negatives.ranking=3` would
    with pytest.raises(ConfigError, match=r"unknown formats \['ranking'\]"):
        check_config(cfg)


def test_missing_data_path(cfg, tmp_path: Path) -> None:
    cfg.data.corpus.locale_dir = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"data.corpus.locale_dir=.*nowhere: no such"):
        check_config(cfg)


def test_teacher_narrower_than_student(cfg, tmp_path: Path) -> None:
    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 16}')
    with open_dict(cfg):
        cfg.teacher = {"path": str(folder)}
    with pytest.raises(ConfigError, match=r"16 wide, narrower than the student's 32"):
        check_config(cfg)


@pytest.mark.parametrize("path, message", [
    (None, r"guide=default needs guide.path=<folder>"),
    ("/nowhere/guide", r"guide.path=/nowhere/guide: no such folder"),
])
def test_a_guide_without_a_loadable_path(tmp_path: Path, locale_dir: Path, path: str | None,
                                        message: str) -> None:
    overrides = ["guide=default", *([f"guide.path={path}"] if path else [])]
    cfg = compose_train([*tiny_overrides(tmp_path, locale_dir), *overrides])
    with pytest.raises(UserError, match=message):
        check_config(cfg)


def test_stage_steps_shorter_than_the_run(cfg) -> None:
    cfg.data.stages[0].steps = 2  # max_steps is 4
    cfg.data.stages[1].steps = 1
    with pytest.raises(ConfigError, match=r"max_steps=4 is more than the stages. steps \[2, 1\]"):
        check_config(cfg)


@pytest.mark.parametrize("override, message", [
    ("model=f2llm_99m", "Could not find 'model/f2llm_99m'"),
    ("experiment=no_such_experiment", "Could not find 'experiment/no_such_experiment'"),
])
def test_unknown_model_or_experiment_stops_in_seconds(override: str, message: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "src/f2llm/train.py"), override],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Available options" in done.stderr  # Hydra lists the valid names
    assert "[INFO]" not in done.stderr + done.stdout  # before any work (no wall-time bound)
