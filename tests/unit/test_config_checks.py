"""Bad settings stop the run at once with one message that names the setting (the messages as a
user's command prints them: tests/commands/test_user_errors.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import open_dict

from f2llm.config_checks import ConfigError, check_config
from f2llm.errors import UserError
from tests.conftest import compose_train, tiny_overrides


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


