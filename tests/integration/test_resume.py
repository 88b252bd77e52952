"""A run resumed from a mid-epoch checkpoint continues with the same batches and losses."""

from __future__ import annotations

import json
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
        self.steps.append((trainer.global_step, int(batch.position), batch.stage,
                           batch.group, float(outputs["loss"])))


TWO_STAGES = [
    {"name": "stage1", "datasets": ["gettext_bitext"], "instructions": False, "steps": 4},
    {"name": "stage2", "datasets": ["gettext_bitext", "gettext_domains", "gettext_names"],
     "instructions": True, "steps": 4},
]


def run(tmp: Path, locale: Path, name: str, ckpt: str | None = None) -> list:
    cfg = compose_train(tiny_overrides(tmp / name, locale, **{
        "trainer.max_steps": 8, "trainer.val_check_interval": 100,
        "callbacks.checkpoint.every_n_train_steps": 3, "callbacks.checkpoint.save_top_k": -1,
        "callbacks.checkpoint.save_last": False, "callbacks.export": None,
        "paths.data_dir": str(tmp / "data"),
    }))
    with open_dict(cfg):
        cfg.final_validate = False
        cfg.data.stages = TWO_STAGES
        cfg.data.alpha = 0.0  # uniform over groups: the small formats show up within 4 steps
    L.seed_everything(cfg.seed)
    module, datamodule, trainer = build(cfg)
    recorder = LossRecorder()
    trainer.callbacks.append(recorder)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    return recorder.steps


def test_resume_matches_uninterrupted_run_across_the_stage_switch(
    tmp_path: Path, locale_dir: Path
) -> None:
    full = run(tmp_path, locale_dir, "full")
    stages = [s[2] for s in full]
    assert stages == ["stage1"] * 4 + ["stage2"] * 4
    assert {s[3].split("/")[0] for s in full[:4]} == {"gettext_bitext"}
    checkpoints = tmp_path / "full" / "run" / "checkpoints"
    assert (checkpoints / "stage-stage1-end.ckpt").exists()
    ckpts = sorted(checkpoints.glob("*step=3*.ckpt"))
    assert ckpts, list(checkpoints.iterdir())
    # Step 3 is in stage 1: the resumed run crosses the switch.
    resumed = run(tmp_path, locale_dir, "resumed", ckpt=str(ckpts[0]))
    assert [s[:4] for s in resumed] == [s[:4] for s in full[3:]]
    assert [s[4] for s in resumed] == pytest.approx([s[4] for s in full[3:]], rel=1e-5)
    # The realised mix survives the resume: the resumed run's summary counts every batch.
    mix = json.loads((tmp_path / "resumed" / "run" / "data_mix.json").read_text())
    assert mix["batches"] == 8
