"""A NaN loss skips its step and is logged with its batch; too many in a row stop the run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from f2llm.module import NonFiniteLoss
from f2llm.train import build
from tests.conftest import compose_train, tiny_overrides


class NaNAt:
    """Wraps the objective: a NaN loss at the given global steps."""

    def __init__(self, objective, module, steps) -> None:
        self.objective, self.module, self.steps = objective, module, set(steps)

    def __getattr__(self, name):
        return getattr(self.objective, name)

    def on_batch(self, *args, **kwargs):
        loss, logs = self.objective.on_batch(*args, **kwargs)
        if self.module.global_step in self.steps or "all" in self.steps:
            loss = loss * float("nan")
        return loss, logs


def fit(tmp: Path, locale: Path, nan_steps, max_steps: int = 4):
    cfg = compose_train(tiny_overrides(tmp, locale, **{
        "trainer.max_steps": max_steps, "trainer.val_check_interval": 100,
        "callbacks.export": None, "module.max_nonfinite_in_a_row": 3}))
    with open_dict(cfg):
        cfg.final_validate = False
    module, datamodule, trainer = build(cfg)
    objective = module.objective
    object.__setattr__(module, "objective", NaNAt(objective, module, nan_steps))
    weights = []

    class Watch(__import__("lightning").Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            weights.append(pl_module.encoder.backbone.norm.weight.detach().clone())

    trainer.callbacks.append(Watch())
    trainer.fit(module, datamodule=datamodule)
    return module, weights


def test_nan_step_is_skipped_and_logged(tmp_path: Path, locale_dir: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="f2llm.module"):
        module, weights = fit(tmp_path, locale_dir, nan_steps=[1])
    assert module.nonfinite_total == 1
    # Weights after batch 1 (the NaN one) equal those after batch 0: no update was applied.
    torch.testing.assert_close(weights[1], weights[0], atol=0, rtol=0)
    assert not torch.equal(weights[2], weights[1])  # training went on
    message = next(r.getMessage() for r in caplog.records if "non-finite" in r.getMessage())
    assert "dataset gettext_bitext" in message and "language" in message
    assert "position 1" in message


def test_nan_in_a_row_stops_the_run(tmp_path: Path, locale_dir: Path) -> None:
    with pytest.raises(NonFiniteLoss, match=r"3 non-finite losses in a row.*Lower optimizer.lr"):
        fit(tmp_path, locale_dir, nan_steps=["all"], max_steps=6)
