"""A run resumed from a mid-epoch checkpoint continues with the same batches and losses."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from omegaconf import open_dict

from f2llm.train import build
from tests.conftest import compose_train, tiny_overrides


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.steps: list[tuple[int, int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append((trainer.global_step, int(batch["position"]), float(outputs["loss"])))


def run(tmp: Path, locale: Path, name: str, ckpt: str | None = None) -> list:
    cfg = compose_train(tiny_overrides(tmp / name, locale, **{
        "trainer.max_steps": 6, "trainer.val_check_interval": 100,
        "callbacks.checkpoint.every_n_train_steps": 3, "callbacks.checkpoint.save_top_k": -1,
        "callbacks.checkpoint.save_last": False, "callbacks.export": None,
        "paths.data_dir": str(tmp / "data"),
    }))
    with open_dict(cfg):
        cfg.final_validate = False
    L.seed_everything(cfg.seed)
    module, datamodule, trainer = build(cfg)
    recorder = LossRecorder()
    trainer.callbacks.append(recorder)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    return recorder.steps


def test_resume_matches_uninterrupted_run(tmp_path: Path, locale_dir: Path) -> None:
    full = run(tmp_path, locale_dir, "full")
    ckpts = sorted((tmp_path / "full" / "run" / "checkpoints").glob("*step=3*.ckpt"))
    assert ckpts, list((tmp_path / "full" / "run" / "checkpoints").iterdir())
    resumed = run(tmp_path, locale_dir, "resumed", ckpt=str(ckpts[0]))
    assert [s[:2] for s in resumed] == [s[:2] for s in full[3:]]
    assert [s[2] for s in resumed] == pytest.approx([s[2] for s in full[3:]], rel=1e-5)
