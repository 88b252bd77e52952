"""eval.py scores an export and a checkpoint of the same run identically, on all four tasks
(eval.py as a user types it, against the run's own final validation:
tests/commands/test_eval.py); the held-out instructions follow the stage trained last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from f2llm.eval import evaluate, format_table
from f2llm.train import train
from tests.conftest import TEST_VAL_CATALOGS, compose_config


def eval_cfg(model_path: Path, out: Path, train_cfg: DictConfig) -> DictConfig:
    cfg = compose_config("eval", [f"model_path={model_path}", f"paths.output_dir={out}",
                                  f"paths.data_dir={train_cfg.paths.data_dir}"])
    with open_dict(cfg):
        cfg.data.corpus = train_cfg.data.corpus  # the test's small locale slice
    assert list(cfg.data.corpus.val_catalogs) == TEST_VAL_CATALOGS
    return cfg


def test_eval_export_and_checkpoint_agree(cfg_tiny: DictConfig, tmp_path: Path) -> None:
    train(cfg_tiny)
    run = Path(cfg_tiny.paths.output_dir)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg_tiny, run / ".hydra" / "config.yaml")  # as Hydra writes it
    by_export = evaluate(eval_cfg(run / "export", tmp_path / "a", cfg_tiny))
    by_ckpt = evaluate(eval_cfg(run / "checkpoints" / "last.ckpt", tmp_path / "b", cfg_tiny))
    for task_metric in ("bitext/accuracy", "retrieval/ndcg_at_10", "retrieval/recall_at_10",
                        "clustering/v_measure", "classification/accuracy"):
        for dim in (8, 16, 32):
            key = f"{task_metric}@{dim}"
            assert 0.0 <= by_export[key] <= 1.0
            assert by_export[key] == pytest.approx(by_ckpt[key], abs=2e-3), key
    saved = json.loads((tmp_path / "a" / "eval_metrics.json").read_text())
    assert saved["metrics"] == pytest.approx(by_export)
    assert (tmp_path / "a" / "matryoshka.png").exists()
    table = format_table(by_export).splitlines()
    assert table[0].split()[1:] == ["8", "16", "32"]
    assert any(line.startswith("classification/accuracy") for line in table)


def test_held_out_instructions_follow_the_last_trained_batch(cfg_tiny: DictConfig) -> None:
    """The stage trained last says whether held-out queries carry instructions: stage 2's stay
    on for a validation after its batches, also once `setup` is called again, as
    `trainer.validate` after fit does (the plan and the sampler's place stay)."""
    with open_dict(cfg_tiny):
        cfg_tiny.data.stages[0].steps = 2
    datamodule = instantiate(cfg_tiny.data, encoder=instantiate(cfg_tiny.model))
    datamodule.setup("fit")
    assert datamodule.trained_stage().name == "stage1"  # before any batch: position 0
    trained = []
    batches = iter(datamodule.train_dataloader())
    ahead = next(batches)
    for _ in range(3):
        # Lightning's loop fetches the next batch before training this one: the sampler is ahead.
        batch, ahead = ahead, next(batches)
        trained.append(datamodule.on_before_batch_transfer(batch, 0).stage)
        assert datamodule.trained_stage().name == trained[-1], trained
    assert trained == ["stage1", "stage1", "stage2"]
    plan = datamodule.plan
    datamodule.setup("validate")
    assert datamodule.plan is plan
    assert datamodule.trained_stage().instructions


def test_held_out_instructions_after_a_resume_follow_the_checkpoint(cfg_tiny: DictConfig
                                                                     ) -> None:
    """A resumed run validating before its first batch: the checkpoint says which stage trained
    last, even once the loader has drawn the next stage's batch ahead (its workers do)."""
    with open_dict(cfg_tiny):
        cfg_tiny.data.stages[0].steps = 2
    encoder = instantiate(cfg_tiny.model)
    datamodule = instantiate(cfg_tiny.data, encoder=encoder)
    datamodule.setup("fit")
    batches = iter(datamodule.train_dataloader())
    for _ in range(2):  # stage 1's two batches, trained
        datamodule.on_before_batch_transfer(next(batches), 0)
    state = datamodule.state_dict()
    resumed = instantiate(cfg_tiny.data, encoder=encoder)
    resumed.setup("fit")
    resumed.load_state_dict(state)  # Lightning restores after setup
    ahead = next(iter(resumed.train_dataloader()))
    assert (ahead.stage, ahead.position) == ("stage2", 2)  # drawn, not trained
    assert resumed.trained_stage().name == "stage1"
