"""F2LLM-v2 objective: Matryoshka in-batch and hard-negative InfoNCE, plus KD; optionally
false-negative masking and the loss at intermediate layers (Matryoshka over layers)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from f2llm.objective.contrastive import hard_negative_loss, inbatch_loss
from f2llm.objective.distillation import distillation_loss
from f2llm.objective.false_negatives import FalseNegativeMasks, false_negative_masks
from f2llm.objective.matryoshka import (
    check_matryoshka,
    matryoshka_dims,
    matryoshka_loss,
    matryoshka_weights,
)

if TYPE_CHECKING:
    from f2llm.data.batch import TrainBatch


@dataclass(eq=False)
class F2LLMObjective:
    """L_inbatch + L_hard + kd_weight * L_kd, the contrastive terms summed over dims.

    `mrl_dims=None` derives the dims from the embedding width at call time;
    `mrl_weights=None` uses `matryoshka_weights`. Explicit weights need explicit dims
    of the same length, paired by position.

    False negatives (off by default): `mask_same_text` drops a candidate whose text (token
    ids) equals the row's positive; `false_negative_margin` drops one the model scores more
    than that above the positive (Qwen3-Embedding: 0.1); given a guide model's embeddings of
    the batch (`guide=` in the call), GISTEmbed's rule drops a candidate the guide scores above
    the positive less `guide_margin` (`guide_strategy` "absolute" or "relative", as
    sentence-transformers' `GISTEmbedLoss`). `layers` (1-based decoder layers
    below the last, e.g. [1, 2]) adds the Matryoshka contrastive loss of each such layer's
    pooled output, times `layer_weights` (None: 1 / len(layers) each); the encoder then
    returns [texts, 1 + len(layers), D] (`Encoder.forward(layers=...)`).
    """

    tau: float = 0.05
    mrl_dims: list[int] | None = None
    mrl_weights: list[float] | None = None
    kd_weight: float = 1.0
    gather_inbatch: bool = True
    mask_same_text: bool = False
    false_negative_margin: float | None = None
    guide_margin: float = 0.0
    guide_strategy: str = "absolute"
    layers: list[int] | None = None
    layer_weights: list[float] | None = None

    def __post_init__(self) -> None:
        check_matryoshka(self.mrl_dims, self.mrl_weights)
        if self.guide_strategy not in ("absolute", "relative"):
            raise ValueError("objective.guide_strategy must be 'absolute' or 'relative', got "
                             f"{self.guide_strategy!r}")
        self.layers = [int(x) for x in self.layers] if self.layers else None
        weights = self.layer_weights
        if weights is not None and (self.layers is None or len(weights) != len(self.layers)):
            raise ValueError(f"layer_weights has {len(weights)} values for "
                             f"{len(self.layers or [])} layers (they pair by position)")
        if self.layers is not None and weights is None:
            # sentence-transformers' AdaptiveLayerLoss default ("uniform", prior_layers_weight 1)
            weights = [1.0 / len(self.layers)] * len(self.layers)
        self.layer_weights = None if weights is None else [float(w) for w in weights]

    @property
    def masks_false_negatives(self) -> bool:
        return self.mask_same_text or self.false_negative_margin is not None

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
        keys: tuple[Tensor, Tensor | None] | None = None,
        guide: tuple[Tensor, Tensor, Tensor | None] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss, and detached logs of every term and of each dim (`loss@{dim}`).

        Shapes: query [B, D], positive [B, D], negatives [B, K, D] or None (K may be
        0); raw embeddings. With `layers`, every text has a layer axis after its own:
        [B, 1 + L, D] and [B, K, 1 + L, D], the final layer first. `teacher` maps 'query',
        'positive' and, when there are negatives, 'negatives' to teacher embeddings at least
        D wide. `keys`: the positives' and negatives' text keys, for `mask_same_text`.
        `guide`: a guide model's embeddings of the queries, positives and negatives (any
        width), for GISTEmbed's rule.
        """
        layered = self.layers is not None
        if layered and query.dim() != 3:
            raise ValueError("objective.layers is set: the embeddings need a layer axis "
                             "(Encoder.forward(layers=...))")
        if negatives is not None and negatives.shape[1] == 0:
            negatives = None  # K = 0: a batch without hard negatives
        if not (use_inbatch or negatives is not None or teacher is not None):
            raise ValueError(
                "nothing to optimise: no in-batch, hard-negative or KD term"
            )
        # Final layer: index 0 of the layer axis.
        final = ((query[:, 0], positive[:, 0], None if negatives is None else negatives[:, :, 0])
                 if layered else (query, positive, negatives))
        masks = None
        if self.masks_false_negatives or guide is not None:
            masks = false_negative_masks(*final, use_inbatch, self.mask_same_text,
                                         self.false_negative_margin, keys, self.gather_inbatch,
                                         guide, self.guide_margin, self.guide_strategy)

        terms, per_dim = self._contrastive(*final, use_inbatch, masks)
        logs: dict[str, Tensor] = {}
        if masks is not None:
            logs.update({f"dropped/{k}": v for k, v in masks.dropped.items()})
        if layered:
            for j, (layer, weight) in enumerate(zip(self.layers, self.layer_weights,
                                                    strict=True), start=1):
                layer_terms, _ = self._contrastive(
                    query[:, j], positive[:, j],
                    None if negatives is None else negatives[:, :, j], use_inbatch, masks)
                if not layer_terms:  # a KD-only batch: no contrastive term at any layer
                    break
                layer_loss = torch.stack(list(layer_terms.values())).sum()
                terms[f"loss_layer{layer}"] = weight * layer_loss
                logs[f"loss@layer{layer}"] = layer_loss.detach()
        if teacher is not None:
            students = {"query": final[0], "positive": final[1]}
            if final[2] is not None:
                students["negatives"] = final[2]
            missing = students.keys() - teacher.keys()
            if missing:
                raise ValueError(f"teacher embeddings missing for {sorted(missing)}")
            # Raw, full width: the student copies the teacher's vector, norm included.
            kd = [distillation_loss(students[k], teacher[k]) for k in students]
            terms["loss_kd"] = torch.stack(kd).sum()

        scale = {"loss_kd": self.kd_weight}
        loss = torch.stack([scale.get(k, 1.0) * v for k, v in terms.items()]).sum()
        logs = {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}, **logs}
        logs.update({f"loss@{d}": v for d, v in per_dim.items()})
        return loss, logs

    def _contrastive(self, query: Tensor, positive: Tensor, negatives: Tensor | None,
                     use_inbatch: bool, masks: FalseNegativeMasks | None
                     ) -> tuple[dict[str, Tensor], dict[int, Tensor]]:
        """The Matryoshka-weighted in-batch and hard-negative terms of one layer, and the
        summed unweighted loss per dim."""
        dims, weights = self.dims_and_weights(query.shape[-1])
        terms: dict[str, Tensor] = {}
        per_dim: dict[int, Tensor] = {}
        if use_inbatch:
            loss_fn = partial(inbatch_loss, tau=self.tau, gather=self.gather_inbatch,
                              mask=None if masks is None else masks.inbatch)
            terms["loss_inbatch"], per_dim = matryoshka_loss(
                loss_fn, [query, positive], dims, weights
            )
        if negatives is not None:
            loss_fn = partial(hard_negative_loss, tau=self.tau,
                              mask=None if masks is None else masks.hard)
            terms["loss_hard"], hard = matryoshka_loss(
                loss_fn, [query, positive, negatives], dims, weights
            )
            per_dim = {d: per_dim[d] + v if per_dim else v for d, v in hard.items()}
        return terms, per_dim

    def on_batch(self, emb: Tensor, batch: TrainBatch, teacher: Tensor | None = None,
                 guide: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of a training batch's embeddings `emb` (in `TrainBatch`'s layout) and, for
        KD, of the teacher's embeddings of the same texts; `guide`: a guide model's embeddings
        of the same texts, for GISTEmbed's false-negative rule."""
        query, positive, negatives = batch.split(emb)
        targets = None
        if teacher is not None:
            t_query, t_positive, t_negatives = batch.split(teacher)
            targets = {"query": t_query, "positive": t_positive}
            if t_negatives is not None:
                targets["negatives"] = t_negatives
        keys = batch.candidate_keys() if self.mask_same_text else None
        return self(query, positive, negatives, use_inbatch=batch.use_inbatch, teacher=targets,
                    keys=keys, guide=None if guide is None else batch.split(guide))
