"""Stage transitions: log the switch, checkpoint the boundary, optionally restart the lr."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from f2llm.data.batch import TrainBatch
from f2llm.module import restarted_per_stage

log = logging.getLogger(__name__)


class StageTransition(L.Callback):
    """Follows the datamodule's stages (data and instructions switch inside its sampler, on an
    exact step, so prefetching cannot blur the boundary); this callback owns the rest:

    - logs `train/stage` (the stage's index) and a line at each switch;
    - writes `<checkpoint_dir>/stage-<name>-end.ckpt` when a stage finishes;
    - with `restart_lr`, each stage replays the whole lr schedule (warmup, then decay), squeezed
      onto the stage's length, as a pure function of the step, so resuming is exact.
    """

    def __init__(self, checkpoint_dir: str | Path | None = None, restart_lr: bool = False) -> None:
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.restart_lr = restart_lr
        self.current: str | None = None

    def _stages(self, trainer: L.Trainer) -> tuple[list[str], list[int]] | None:
        schedule = getattr(trainer.datamodule, "stage_schedule", None)
        return schedule() if schedule is not None else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stages = self._stages(trainer)
        if not self.restart_lr or stages is None or len(stages[0]) < 2:
            return
        starts, epoch_len = stages[1][:-1], stages[1][-1]
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not hasattr(scheduler, "lr_lambdas"):
                raise TypeError("restart_lr needs a LambdaLR schedule (e.g. cosine_with_warmup)")
            scheduler.lr_lambdas = [restarted_per_stage(f, starts, epoch_len)
                                    for f in scheduler.lr_lambdas]
            # Re-apply at the current step (0, or the step a resumed run continues from).
            for group, f in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas,
                                strict=True):
                group["lr"] = group["initial_lr"] * f(scheduler.last_epoch)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if not isinstance(batch, TrainBatch):
            return
        stage = batch.stage
        if stage != self.current:
            if self.current is not None:
                log.info("stage %s -> %s at step %d", self.current, stage, trainer.global_step)
            self.current = stage
        stages = self._stages(trainer)
        if stages is not None:
            pl_module.log("train/stage", float(stages[0].index(stage)), batch_size=1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        stages = self._stages(trainer)
        if stages is None or self.checkpoint_dir is None or not isinstance(batch, TrainBatch):
            return
        names, starts = stages
        next_position = int(batch.position) + 1
        if next_position in starts[1:]:
            name = names[starts.index(next_position) - 1]
            path = self.checkpoint_dir / f"stage-{name}-end.ckpt"
            # Full state (optimizer, scheduler, loops, callbacks): a stage end is a resume point.
            trainer.save_checkpoint(path, weights_only=False)
            log.info("stage %s finished at step %d: %s", name, trainer.global_step, path)
