"""The step timer of the scripts that time training steps (bench_ab, bench_loader,
bench_prune_distill): a module of its own, so that `_common` imports no Lightning."""

from __future__ import annotations

import time

import lightning as L


class StepTimer(L.Callback):
    """The time at the end of every training step (from `time.perf_counter`)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args: object) -> None:
        self.times.append(time.perf_counter())

    def ms_per_step(self, skip: int = 20) -> float:
        """Mean ms per step from the end of step `skip` to the end of the last one."""
        t = self.times[skip:]
        if len(t) < 2:
            raise ValueError(f"{len(self.times)} steps timed: need more than {skip + 1}")
        return 1000 * (t[-1] - t[0]) / (len(t) - 1)
