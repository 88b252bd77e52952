"""`trainer=ddp_sim` trains two CPU processes end to end through `train()` (the configs compose
and build: tests/unit/test_scale_configs.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate

from f2llm.train import train
from tests.conftest import compose_train, tiny_overrides


def test_ddp_sim_trains_two_processes_end_to_end(tmp_path: Path, locale_dir: Path) -> None:
    cfg = compose_train(tiny_overrides(tmp_path, locale_dir, **{
        "trainer": "ddp_sim", "trainer.max_steps": 2, "final_validate": False}))
    L.seed_everything(cfg.seed, workers=True)
    init = instantiate(cfg.model).state_dict()  # the weights `train` starts from
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert {"train/loss", "val/bitext/accuracy@32"} <= set(metrics)
    assert 0 < json.loads((run / "final_metrics.json").read_text())["train/loss"] < math.inf
    # Both steps were taken, one global batch each (the ranks drew the same group).
    assert json.loads((run / "data_mix.json").read_text())["batches"] == 2
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2
    trained = {k.removeprefix("encoder."): v for k, v in state["state_dict"].items()}
    assert init.keys() == trained.keys()
    assert max((trained[k] - init[k]).abs().max() for k in init) > 0  # the optimiser stepped
    assert (run / "export" / "modules.json").exists()
