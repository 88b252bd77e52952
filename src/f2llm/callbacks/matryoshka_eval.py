"""Bitext retrieval accuracy at every Matryoshka dim on the held-out catalogs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from f2llm.evaluation import bitext_accuracy_by_dim, mean_over_languages

log = logging.getLogger(__name__)


class MatryoshkaEval(L.Callback):
    """Collects the validation embeddings of both bitext sides and scores every dim.

    Logs `val/bitext/accuracy@{dim}` (mean over languages, both directions) and writes the
    per-language table of each validation to `<output_dir>/matryoshka_eval.jsonl`.
    """

    def __init__(self, output_dir: str | Path | None = None) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self._parts: dict[str, list[tuple[list[int], torch.Tensor]]] = {}
        self.last: dict[int, dict[str, float]] = {}
        self.last_step: int | None = None  # global step of the latest evaluation

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._parts = {}
        update = getattr(trainer.datamodule, "update_eval_instructions", None)
        if update is not None:
            update()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._parts.setdefault(outputs["side"], []).append(
            (outputs["rows"], outputs["embeddings"].cpu()))

    def _side(self, side: str, n: int) -> torch.Tensor:
        parts = self._parts[side]
        out = torch.empty(n, parts[0][1].shape[1])
        for rows, emb in parts:
            out[torch.as_tensor(rows)] = emb
        return out

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._parts.get("bitext/source"):
            return
        bitext = trainer.datamodule.val_sets["bitext"]
        n = len(bitext["source"])
        result = bitext_accuracy_by_dim(
            self._side("bitext/source", n), self._side("bitext/target", n), bitext["language"],
            pl_module.mrl_dims,
        )
        self.last, self.last_step = result, trainer.global_step
        means = {dim: mean_over_languages(per_lang) for dim, per_lang in result.items()}
        for dim, value in means.items():
            pl_module.log(f"val/bitext/accuracy@{dim}", value, sync_dist=False)
        full = max(means)
        pl_module.log("val/bitext/accuracy", means[full], prog_bar=True)
        log.info("step %d bitext accuracy by dim: %s", trainer.global_step,
                 {d: round(v, 4) for d, v in sorted(means.items())})
        if self.output_dir is not None and trainer.is_global_zero:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            record = {"step": trainer.global_step, "mean": means, "per_language": result}
            with (self.output_dir / "matryoshka_eval.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")
