"""Stage transitions: log the switch, checkpoint the boundary."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy

from f2llm.data.batch import TrainBatch

log = logging.getLogger(__name__)


class StageTransition(L.Callback):
    """Follows the datamodule's stages (data and instructions switch inside its sampler, on an
    exact step, so prefetching cannot blur the boundary; a per-stage lr restart is the
    scheduler's, `f2llm.schedule`); this callback owns the rest:

    - logs `train/stage` (the stage's index) and a line at each switch;
    - writes `<checkpoint_dir>/stage-<name>-end.ckpt` when a stage finishes. When the stage
      ends with the run (at `trainer.max_steps`), its checkpoint is the run's last one:
      once `ModelCheckpoint` has written `last.ckpt` at that step, the stage's file is a hard
      link to it (one copy on disk, not a second save of the model and optimiser). Each save
      writes a new file and renames it over the old (`f2llm.checkpoint_io`), so a later
      `last.ckpt` leaves the linked file as it was.
    """

    def __init__(self, checkpoint_dir: str | Path | None = None) -> None:
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.current: str | None = None
        self._ends_with_fit: tuple[str, Path] | None = None  # the stage, its checkpoint

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
            if 0 < trainer.max_steps <= trainer.global_step:  # the stage ends with the run
                self._ends_with_fit = name, path  # written at the end of fit
                return
            # Full state (optimizer, scheduler, loops, callbacks): a stage end is a resume point.
            trainer.save_checkpoint(path, weights_only=False)
            log.info("stage %s finished at step %d: %s", name, trainer.global_step, path)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._ends_with_fit is None:
            return
        (name, path), self._ends_with_fit = self._ends_with_fit, None
        last = trainer.checkpoint_callback
        # Decided alike on every rank (a save is collective): from the callback's state, not
        # from files another node may not see. A sharded checkpoint is a folder: saved.
        linked = (isinstance(last, ModelCheckpoint) and last.last_model_path
                  and getattr(last, "_last_global_step_saved", None) == trainer.global_step
                  and not isinstance(trainer.strategy, ModelParallelStrategy))
        if not linked:
            trainer.save_checkpoint(path, weights_only=False)
        elif trainer.is_global_zero:
            path.unlink(missing_ok=True)
            try:
                os.link(last.last_model_path, path)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(last.last_model_path, path)
        log.info("stage %s finished at step %d: %s%s", name, trainer.global_step, path,
                 f" (a link to {last.last_model_path})" if linked else "")
