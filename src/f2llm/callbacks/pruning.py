"""Structured pruning at the start of fit: calibrate, prune to the target shape, save."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L

from f2llm.pruning import prune_in_steps, step_targets
from f2llm.pruning.importance import calibration_batches

log = logging.getLogger(__name__)


def _shape(config: Any) -> dict[str, int]:
    keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size")
    return {k: int(getattr(config, k)) for k in keys}


class StructuredPruning(L.Callback):
    """Prunes the encoder's backbone to `target["shape"]` (a `configs/model/*.yaml`) in
    `setup`, before the optimiser exists, so the optimiser only ever sees the pruned weights.

    Importance is activation-based, from `calibration_texts` records of the first stage run
    through the embedding prompts; `method: first_k` keeps the first k of everything (the naive
    baseline). `hidden: prefix` keeps the first hidden channels (an MRL-trained model's
    embedding prefix, which KD compares with) instead of choosing them by the method.
    `steps > 1` prunes iteratively (0.6B -> ... -> target), re-measuring importance
    before each step. A resumed run prunes again (deterministically: same texts, same seed), and
    the checkpoint's weights then replace the pruned ones. Logs the kept shape and parameter
    count; the pruned backbone is saved under `save_dir` (loads with plain `transformers`).
    """

    def __init__(self, target: Mapping[str, Any], method: str = "activation",
                 calibration_texts: int = 1024, steps: int = 1, batch_size: int = 32,
                 save_dir: str | Path | None = None, seed: int = 0,
                 hidden: str = "method") -> None:
        self.target = dict(target.get("shape", target))
        self.method, self.steps, self.hidden = method, steps, hidden
        self.calibration_texts, self.batch_size = calibration_texts, batch_size
        self.save_dir = Path(save_dir) if save_dir else None
        self.seed = seed
        self.summary: dict[str, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        encoder = pl_module.encoder
        backbone = encoder.backbone
        before = _shape(backbone.config)
        wanted = {**before, **{k: int(v) for k, v in self.target.items() if k in before}}
        if before == wanted:
            log.info("pruning: the model already has the target shape")
            return
        params_before = sum(p.numel() for p in backbone.parameters())
        targets = step_targets(backbone.config, self.target, self.steps)
        # Calibrate where training runs (a GPU): the strategy would move the model there next,
        # and the importance forward of a 0.6B over the calibration texts is slow on a CPU.
        backbone.to(trainer.strategy.root_device)
        method = self.method
        batches = None
        if method == "activation":
            texts = trainer.datamodule.calibration_texts(self.calibration_texts, self.seed)
            batches = calibration_batches(encoder, texts, self.batch_size)
        prune_in_steps(backbone, targets, batches, method=method, hidden=self.hidden)
        after = _shape(backbone.config)
        params = sum(p.numel() for p in backbone.parameters())
        self.summary = {"method": method, "hidden": self.hidden, "before": before,
                        "after": after, "parameters_before": params_before, "parameters": params}
        log.info("pruned %s -> %s (%s, hidden channels: %s): %s -> %s parameters", before,
                 after, method, self.hidden, f"{params_before:,}", f"{params:,}")
        for logger in trainer.loggers:
            logger.log_hyperparams({"pruning/parameters": params, "pruning/method": method,
                                    **{f"pruning/{k}": v for k, v in after.items()}})
        if self.save_dir is not None and trainer.is_global_zero:
            backbone.save_pretrained(self.save_dir, safe_serialization=True)
            encoder.tokenizer.save_pretrained(self.save_dir)
            (self.save_dir / "pruning.json").write_text(json.dumps(self.summary, indent=2))
