"""LightningModule: composes the encoder, the objective and the optimiser; no maths here."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from f2llm.model import Encoder
from f2llm.objective import F2LLMObjective


def cosine_with_warmup(
    optimizer: Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr: float = 0.0,
) -> LambdaLR:
    """Linear warmup to the optimiser's lr, then cosine decay to `min_lr` at `total_steps`."""
    base = optimizer.param_groups[0]["lr"]
    floor = min_lr / base if base else 0.0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


class F2LLMModule(L.LightningModule):
    def __init__(
        self,
        encoder: Encoder,
        objective: F2LLMObjective,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[..., LRScheduler] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.objective = objective
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    @property
    def mrl_dims(self) -> list[int]:
        return self.objective.dims_and_weights(self.encoder.hidden_size)[0]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        emb = self.encoder.forward_chunks(batch["chunks"], batch["restore"])
        b, k = batch["batch_size"], batch["num_negatives"]
        query, positive = emb[:b], emb[b : 2 * b]
        # Negatives were laid out column by column: negative_1 of every query, then negative_2...
        negatives = emb[2 * b :].view(k, b, -1).transpose(0, 1) if k else None
        loss, logs = self.objective(query, positive, negatives, use_inbatch=batch["use_inbatch"])
        self.log("train/loss", logs.pop("loss"), batch_size=b, prog_bar=True)
        self.log_dict({f"train/{name}": value for name, value in logs.items()}, batch_size=b)
        # Per format too: a clustering batch's loss is not comparable to a retrieval batch's.
        fmt = batch.get("format")
        if fmt is not None:
            self.log(f"train/{fmt}/loss", loss.detach(), batch_size=b)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        emb = self.encoder.forward_chunks(batch["chunks"], batch["restore"])
        return {"embeddings": emb.float(), "rows": batch["rows"], "side": batch["side"]}

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(
            optimizer=optimizer, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
