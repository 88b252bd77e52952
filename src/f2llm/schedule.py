"""The learning-rate schedule: linear warmup then cosine decay, optionally replayed per stage.

The lr is a pure function of the optimiser step, so a resumed run continues on the same curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(warmup_steps: int, total_steps: int, floor: float = 0.0
                  ) -> Callable[[int], float]:
    """The lr factor at a step: linear warmup to 1 over `warmup_steps`, then cosine decay to
    `floor` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def restarted_per_stage(factor: Callable[[int], float], starts: Sequence[int], epoch_len: int
                        ) -> Callable[[int], float]:
    """`factor` (an lr factor over `epoch_len` steps) replayed within each stage, squeezed onto
    the stage's length; `starts` are the steps where the stages begin."""
    bounds = [*starts, epoch_len]

    def stage_factor(step: int) -> float:
        position = step % epoch_len
        i = max(j for j, s in enumerate(starts) if s <= position)
        length = bounds[i + 1] - bounds[i]
        return factor(int((position - bounds[i]) * epoch_len / length))

    return stage_factor


def cosine_with_warmup(
    optimizer: Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr: float = 0.0,
    restart_per_stage: bool = False,
    stage_starts: Sequence[int] | None = None,
) -> LambdaLR:
    """Linear warmup to the optimiser's lr, then cosine decay to `min_lr` at `total_steps`.

    `stage_starts` are the epoch positions where the training stages begin, then the epoch's
    length (`DataPlan.starts`; `F2LLMModule` passes them). With `restart_per_stage` and two or
    more stages, each stage replays the whole schedule (warmup, then decay) squeezed onto its
    length."""
    base = optimizer.param_groups[0]["lr"]
    factor = warmup_cosine(warmup_steps, total_steps, min_lr / base if base else 0.0)
    if restart_per_stage and stage_starts is not None and len(stage_starts) > 2:
        factor = restarted_per_stage(factor, stage_starts[:-1], stage_starts[-1])
    return LambdaLR(optimizer, factor)
