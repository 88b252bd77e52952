"""F2LLM-v2 objective: Matryoshka in-batch and hard-negative InfoNCE, plus KD."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from f2llm.objective.contrastive import hard_negative_loss, inbatch_loss
from f2llm.objective.distillation import distillation_loss
from f2llm.objective.matryoshka import (
    check_matryoshka,
    matryoshka_dims,
    matryoshka_loss,
    matryoshka_weights,
)

if TYPE_CHECKING:
    from f2llm.data.batch import TrainBatch


class F2LLMObjective:
    """L_inbatch + L_hard + kd_weight * L_kd, the contrastive terms summed over dims.

    `mrl_dims=None` derives the dims from the embedding width at call time;
    `mrl_weights=None` uses `matryoshka_weights`. Explicit weights need explicit dims
    of the same length, paired by position.
    """

    def __init__(
        self,
        tau: float = 0.05,
        mrl_dims: list[int] | None = None,
        mrl_weights: list[float] | None = None,
        kd_weight: float = 1.0,
        gather_inbatch: bool = True,
    ) -> None:
        check_matryoshka(mrl_dims, mrl_weights)
        self.tau = tau
        self.mrl_dims = mrl_dims
        self.mrl_weights = mrl_weights
        self.kd_weight = kd_weight
        self.gather_inbatch = gather_inbatch

    def dims_and_weights(self, hidden_size: int) -> tuple[list[int], list[float]]:
        """Matryoshka dims and their weights for embeddings of width `hidden_size`."""
        dims = self.mrl_dims
        if dims is None:
            dims = matryoshka_dims(hidden_size)
        weights = self.mrl_weights
        if weights is None:
            weights = matryoshka_weights(dims, hidden_size)
        return list(dims), list(weights)

    def __call__(
        self,
        query: Tensor,
        positive: Tensor,
        negatives: Tensor | None,
        use_inbatch: bool,
        teacher: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss, and detached logs of every term and of each dim (`loss@{dim}`).

        Shapes: query [B, D], positive [B, D], negatives [B, K, D] or None (K may be
        0); raw embeddings. `teacher` maps 'query', 'positive' and, when there are
        negatives, 'negatives' to teacher embeddings at least D wide.
        """
        dims, weights = self.dims_and_weights(query.shape[-1])
        if negatives is not None and negatives.shape[1] == 0:
            negatives = None  # K = 0: a batch without hard negatives
        if not (use_inbatch or negatives is not None or teacher is not None):
            raise ValueError(
                "nothing to optimise: no in-batch, hard-negative or KD term"
            )

        terms: dict[str, Tensor] = {}
        per_dim: dict[int, Tensor] = {}
        if use_inbatch:
            loss_fn = partial(inbatch_loss, tau=self.tau, gather=self.gather_inbatch)
            terms["loss_inbatch"], per_dim = matryoshka_loss(
                loss_fn, [query, positive], dims, weights
            )
        if negatives is not None:
            loss_fn = partial(hard_negative_loss, tau=self.tau)
            terms["loss_hard"], hard = matryoshka_loss(
                loss_fn, [query, positive, negatives], dims, weights
            )
            per_dim = {d: per_dim[d] + v if per_dim else v for d, v in hard.items()}
        if teacher is not None:
            students = {"query": query, "positive": positive}
            if negatives is not None:
                students["negatives"] = negatives
            missing = students.keys() - teacher.keys()
            if missing:
                raise ValueError(f"teacher embeddings missing for {sorted(missing)}")
            # Raw, full width: the student copies the teacher's vector, norm included.
            kd = [distillation_loss(students[k], teacher[k]) for k in students]
            terms["loss_kd"] = torch.stack(kd).sum()

        scale = {"loss_kd": self.kd_weight}
        loss = torch.stack([scale.get(k, 1.0) * v for k, v in terms.items()]).sum()
        logs = {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}
        logs.update({f"loss@{d}": v for d, v in per_dim.items()})
        return loss, logs

    def on_batch(self, emb: Tensor, batch: TrainBatch, teacher: Tensor | None = None
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of a training batch's embeddings `emb` (in `TrainBatch`'s layout) and, for
        KD, of the teacher's embeddings of the same texts."""
        query, positive, negatives = batch.split(emb)
        targets = None
        if teacher is not None:
            t_query, t_positive, t_negatives = batch.split(teacher)
            targets = {"query": t_query, "positive": t_positive}
            if t_negatives is not None:
                targets["negatives"] = t_negatives
        return self(query, positive, negatives, use_inbatch=batch.use_inbatch, teacher=targets)
