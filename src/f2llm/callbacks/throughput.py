"""Samples/s, tokens/s and padding share of the training batches."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class ThroughputMonitor(L.Callback):
    """Logs `perf/samples_per_s` (queries), `perf/tokens_per_s` (real tokens, all texts) and
    `perf/padding_fraction`, averaged over the last `window` steps."""

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self._start: float | None = None
        self._samples = self._tokens = self._padding = 0

    def _reset(self) -> None:
        self._start = time.perf_counter()
        self._samples = self._tokens = self._padding = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:
        self._samples += batch.batch_size
        self._tokens += batch.num_tokens
        self._padding += batch.num_padding
        if (batch_idx + 1) % self.window:
            return
        elapsed = time.perf_counter() - (self._start or time.perf_counter())
        world = trainer.world_size
        pl_module.log_dict({
            "perf/samples_per_s": world * self._samples / elapsed,
            "perf/tokens_per_s": world * self._tokens / elapsed,
            "perf/padding_fraction": self._padding / max(1, self._padding + self._tokens),
        }, batch_size=1)
        self._reset()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()  # evaluation time is not training time
