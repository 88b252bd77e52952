"""Stage 1 alone, then stage 2 alone from stage 1's boundary checkpoint; lr restarts."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from omegaconf import open_dict

from f2llm.checkpoints import load_weights
from f2llm.schedule import restarted_per_stage
from f2llm.train import build, train
from tests.conftest import compose_train, tiny_overrides


class FirstBatch(L.Callback):
    def __init__(self) -> None:
        self.batches: list[dict] = []
        self.weights: torch.Tensor | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.weights = pl_module.encoder.backbone.embed_tokens.weight.detach().clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append({k: getattr(batch, k) for k in ("stage", "dataset", "format")})


def test_stage2_alone_starts_from_the_stage1_checkpoint(tmp_path: Path, locale_dir: Path) -> None:
    cfg1 = compose_train(tiny_overrides(tmp_path / "s1", locale_dir,
                                        **{"paths.data_dir": str(tmp_path / "data")}),
                         experiment="gettext_stage1")
    with open_dict(cfg1):
        cfg1.data.stages[0].steps = 4
    train(cfg1)
    ckpt = tmp_path / "s1" / "run" / "checkpoints" / "stage-stage1-end.ckpt"
    assert ckpt.exists()

    cfg2 = compose_train(tiny_overrides(tmp_path / "s2", locale_dir, **{
        "paths.data_dir": str(tmp_path / "data"), "init_from": str(ckpt),
        "data.alpha": 0.0, "trainer.max_steps": 6}), experiment="gettext_stage2")
    with open_dict(cfg2):
        cfg2.data.stages[0].steps = 6
        cfg2.final_validate = False
    module, datamodule, trainer = build(cfg2)
    load_weights(module, cfg2.init_from)
    probe = FirstBatch()
    trainer.callbacks.append(probe)
    trainer.fit(module, datamodule=datamodule)
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    torch.testing.assert_close(probe.weights, saved["encoder.backbone.embed_tokens.weight"])
    assert {b["stage"] for b in probe.batches} == {"stage2"}
    assert {b["format"] for b in probe.batches} >= {"retrieval", "clustering"} or {
        b["format"] for b in probe.batches} >= {"retrieval", "classification"}
    # Stage 2 exports named prompts for its tasks.
    prompts = json.loads((tmp_path / "s2" / "run" / "export" /
                          "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts["query"].startswith("Instruct: Retrieve")
    assert {"gettext_domains", "gettext_names"} <= set(prompts)


def test_restarted_schedule_replays_the_schedule_within_each_stage() -> None:
    def factor(step: int) -> float:  # linear decay over 10 steps
        return 1 - step / 10

    f = restarted_per_stage(factor, starts=[0, 6], epoch_len=10)
    assert [f(s) for s in range(6)] == [factor(int(s * 10 / 6)) for s in range(6)]
    assert f(6) == 1.0 and f(8) == factor(5)
