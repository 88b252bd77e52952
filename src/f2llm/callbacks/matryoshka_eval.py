"""Held-out tasks at every Matryoshka dim: metrics, a per-language table and a figure."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from f2llm.evaluation.figure import matryoshka_figure, save_figure
from f2llm.evaluation.heldout import curves, score_heldout
from f2llm.loggers import log_figure

log = logging.getLogger(__name__)


class MatryoshkaEval(L.Callback):
    """Collects the validation embeddings of every held-out set and scores every dim.

    Logs `val/<task>/<metric>@<dim>` (bitext, retrieval, clustering, classification) and each
    task's main metric at full width as `val/<task>/<metric>`; draws the score-vs-dim figure
    into the loggers that show images (`val/matryoshka`) and `<output_dir>/matryoshka.png`;
    appends every metric and the per-language bitext table to
    `<output_dir>/matryoshka_eval.jsonl`.
    """

    def __init__(self, output_dir: str | Path | None = None, figure: bool = True) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self.figure = figure
        self._parts: dict[str, list[tuple[list[int], torch.Tensor]]] = {}
        self.last: dict[str, float] = {}
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

    def _assemble(self, name: str) -> torch.Tensor:
        parts = self._parts[name]
        n = sum(len(rows) for rows, _ in parts)
        out = torch.empty(n, parts[0][1].shape[1])
        for rows, emb in parts:
            out[torch.as_tensor(rows)] = emb
        return out

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._parts:
            return
        embeddings = {name: self._assemble(name) for name in self._parts}
        metrics, details = score_heldout(embeddings, trainer.datamodule.val_sets,
                                         pl_module.mrl_dims)
        self.last, self.last_step = metrics, trainer.global_step
        for name, value in metrics.items():
            pl_module.log(f"val/{name}", value, prog_bar=name == "bitext/accuracy")
        lines = curves(metrics)
        log.info("step %d held-out scores by dim: %s", trainer.global_step,
                 {task: {d: round(v, 4) for d, v in c.items()} for task, c in lines.items()})
        if not trainer.is_global_zero:
            return
        if self.figure and lines:
            fig = matryoshka_figure(lines, title=f"held-out scores by dim, step "
                                                 f"{trainer.global_step}")
            log_figure(trainer.loggers, "val/matryoshka", fig, trainer.global_step)
            if self.output_dir is not None:
                save_figure(fig, self.output_dir / "matryoshka.png")
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            record = {"step": trainer.global_step, "metrics": metrics,
                      "bitext_per_language": details.get("bitext", {})}
            with (self.output_dir / "matryoshka_eval.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")
