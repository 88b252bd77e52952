"""Stage transitions: log the switch, checkpoint the boundary."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from f2llm.data.batch import TrainBatch

log = logging.getLogger(__name__)


class StageTransition(L.Callback):
    """Follows the datamodule's stages (data and instructions switch inside its sampler, on an
    exact step, so prefetching cannot blur the boundary; a per-stage lr restart is the
    scheduler's, `f2llm.schedule`); this callback owns the rest:

    - logs `train/stage` (the stage's index) and a line at each switch;
    - writes `<checkpoint_dir>/stage-<name>-end.ckpt` when a stage finishes.
    """

    def __init__(self, checkpoint_dir: str | Path | None = None) -> None:
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.current: str | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if not isinstance(batch, TrainBatch):
            return
        stage = batch.stage
        if stage != self.current:
            if self.current is not None:
                log.info("stage %s -> %s at step %d", self.current, stage, trainer.global_step)
            self.current = stage
        names = list(trainer.datamodule.plan.stages)
        pl_module.log("train/stage", float(names.index(stage)), batch_size=1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.checkpoint_dir is None or not isinstance(batch, TrainBatch):
            return
        plan = trainer.datamodule.plan
        names, starts = list(plan.stages), list(plan.starts)
        next_position = int(batch.position) + 1
        if next_position in starts[1:]:
            name = names[starts.index(next_position) - 1]
            path = self.checkpoint_dir / f"stage-{name}-end.ckpt"
            # Full state (optimizer, scheduler, loops, callbacks): a stage end is a resume point.
            trainer.save_checkpoint(path, weights_only=False)
            log.info("stage %s finished at step %d: %s", name, trainer.global_step, path)
