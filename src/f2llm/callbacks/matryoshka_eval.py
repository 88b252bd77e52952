"""Held-out tasks at every Matryoshka dim: metrics, a per-language table and a figure."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L

from f2llm.evaluation.embedders import PackedEncoder
from f2llm.evaluation.figure import matryoshka_figure, save_figure
from f2llm.evaluation.heldout import HeldoutEvaluator, HeldoutScores, curves
from f2llm.loggers import log_figure

log = logging.getLogger(__name__)


class MatryoshkaEval(L.Callback):
    """At the end of each validation, scores the held-out tasks at every dim with a
    `HeldoutEvaluator` of the datamodule's corpus; the held-out queries carry instructions when
    the stage trained last does (`F2LLMDataModule.trained_stage`).

    Every rank embeds every held-out text (a sharded encoder needs every rank in each forward)
    and gets the same scores. Logs `val/<task>/<metric>@<dim>` (bitext, retrieval, clustering,
    classification) and each task's main metric at full width as `val/<task>/<metric>`, and the
    step they are from as `val/step` (in the trainer's metrics and final_metrics.json); draws
    the score-vs-dim figure into the loggers that show images (`val/matryoshka`) and
    `<output_dir>/matryoshka.png`; appends every metric and the per-language bitext table to
    `<output_dir>/matryoshka_eval.jsonl`.
    """

    def __init__(self, output_dir: str | Path | None = None, figure: bool = True) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self.figure = figure
        self.evaluator: HeldoutEvaluator | None = None
        self.scores: HeldoutScores | None = None  # the latest evaluation's

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The datamodule is set up before the callbacks: its corpus holds the held-out sets.
        if self.evaluator is None:
            self.evaluator = HeldoutEvaluator(trainer.datamodule.plan.corpus)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        datamodule = trainer.datamodule
        model = PackedEncoder(pl_module.encoder, datamodule.tokenize, pl_module.device)
        # The context Lightning gives a validation step (autocast under mixed precision).
        with trainer.precision_plugin.val_step_context():
            scores = self.evaluator(model, pl_module.mrl_dims,
                                    instructed=datamodule.trained_stage().instructions)
        metrics = scores.metrics
        if not metrics:
            return
        self.scores = scores
        for name, value in metrics.items():
            pl_module.log(f"val/{name}", value, prog_bar=name == "bitext/accuracy")
        # The step these scores are from, in the metrics fit hands back (not to the loggers).
        pl_module.log("val/step", float(trainer.global_step), logger=False)
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
                      "bitext_per_language": scores.details.get("bitext", {})}
            with (self.output_dir / "matryoshka_eval.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")
