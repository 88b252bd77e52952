"""Training only the embedding rows of tokens that occur in the training data.

A small model with the real Qwen3 vocabulary spends part of each step on its 151,936-row token
embedding (about 11 % for the embedded default, docs/benchmarks.md): a dense vocabulary-sized
gradient and an AdamW update of every row, while the training corpus uses only some of the
rows ("Load What You Need", Abdaoui et al. 2020, trims a multilingual vocabulary to the tokens a
corpus uses). `TrimmedEmbedding` trains the used rows as
one small parameter and keeps the others as a buffer; `full_weight` re-expands to the whole
vocabulary, so an export is an ordinary full-vocabulary model.

Semantics: the result equals full-vocabulary AdamW training. A row whose token never occurs in
the batches gets a zero gradient, so AdamW (zero moments) changes it only by decoupled weight
decay, `w *= 1 - lr * weight_decay` each step. The buffer rows get the same: `decay` holds the
running product of those factors (`track_weight_decay`), applied when a buffer row is looked up
and at re-expansion. Rows of tokens that occur nowhere in training are thus exactly what
full-vocabulary training would give them, up to float rounding of the product.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle


class TrimmedEmbedding(nn.Module):
    """An `nn.Embedding` of the full vocabulary whose trainable rows are `keep` only.

    `weight` is a computed copy of the full table: code that writes into an embedding's
    weight in place (pruning's slicing) needs `untrim_input_embeddings` first."""

    def __init__(self, full: nn.Embedding, keep: Tensor) -> None:
        super().__init__()
        keep = torch.unique(keep.long().to(full.weight.device))  # sorted, no repeats
        vocab = full.num_embeddings
        if keep.numel() and (keep[0] < 0 or keep[-1] >= vocab):
            raise ValueError(f"kept token ids must lie in [0, {vocab})")
        self.num_embeddings, self.embedding_dim = vocab, full.embedding_dim
        self.padding_idx = full.padding_idx
        weight = full.weight.detach()
        self.rows = nn.Parameter(weight[keep].clone(), requires_grad=full.weight.requires_grad)
        self.register_buffer("frozen", weight.clone())
        self.register_buffer("keep", keep)
        index = torch.full((vocab,), -1, dtype=torch.long, device=weight.device)
        index[keep] = torch.arange(keep.numel(), device=weight.device)
        self.register_buffer("index", index)
        self.register_buffer("decay", torch.ones((), dtype=torch.float64, device=weight.device))

    @property
    def weight(self) -> Tensor:
        """The full table (a new tensor; what the full-vocabulary model holds now)."""
        return self.full_weight()

    def full_weight(self) -> Tensor:
        out = self.frozen * self.decay.to(self.frozen.dtype)
        out[self.keep] = self.rows.detach()
        return out

    def forward(self, input_ids: Tensor) -> Tensor:
        slot = self.index[input_ids]
        out = nn.functional.embedding(slot.clamp(min=0), self.rows)
        outside = slot < 0
        if bool(outside.any()):
            rest = self.frozen[input_ids[outside]] * self.decay.to(self.frozen.dtype)
            out = out.masked_scatter(outside.unsqueeze(-1), rest.to(out.dtype))
        return out

    def to_embedding(self) -> nn.Embedding:
        """A plain `nn.Embedding` with the full (re-expanded) table."""
        emb = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx,
                           device=self.frozen.device, dtype=self.rows.dtype)
        with torch.no_grad():
            emb.weight.copy_(self.full_weight())
        emb.weight.requires_grad_(self.rows.requires_grad)
        return emb

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, trained rows={self.keep.numel()}"


def trim_input_embeddings(backbone: nn.Module, keep: Tensor) -> TrimmedEmbedding:
    """Replace `backbone`'s input embedding by a `TrimmedEmbedding` training `keep` only."""
    table = backbone.get_input_embeddings()
    if isinstance(table, TrimmedEmbedding):
        return table
    trimmed = TrimmedEmbedding(table, keep)
    backbone.set_input_embeddings(trimmed)
    return trimmed


def untrim_input_embeddings(backbone: nn.Module) -> None:
    """Put back a plain full-vocabulary `nn.Embedding` (same values), e.g. before export."""
    table = backbone.get_input_embeddings()
    if isinstance(table, TrimmedEmbedding):
        backbone.set_input_embeddings(table.to_embedding())


def track_weight_decay(optimizer: Optimizer, trimmed: TrimmedEmbedding) -> RemovableHandle:
    """After each optimiser step, multiply `trimmed.decay` by the factor AdamW's decoupled
    weight decay applied to the trained rows in that step (the lr of the step, before the
    scheduler moves it). A skipped step (non-finite loss) runs no optimiser step: no decay."""
    group = next((g for g in optimizer.param_groups
                  if any(p is trimmed.rows for p in g["params"])), None)
    if group is None:
        raise ValueError("the optimiser does not hold the trimmed embedding's rows")

    def hook(opt: Optimizer, args: object, kwargs: object) -> None:
        lr = float(group["lr"])
        trimmed.decay.mul_(1.0 - lr * float(group.get("weight_decay", 0.0)))

    return optimizer.register_step_post_hook(hook)


def untrimmed_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict with each `TrimmedEmbedding`'s tensors (`<m>.rows`, `.frozen`, `.keep`,
    `.index`, `.decay`) replaced by the full table `<m>.weight`, as a plain model has it
    (e.g. to merge or load checkpoints of a trimmed run into an untrimmed encoder)."""
    out = dict(state)
    for key in [k for k in state if k.endswith(".frozen")]:
        m = key.removesuffix(".frozen")
        if not all(f"{m}.{n}" in state for n in ("rows", "keep", "index", "decay")):
            continue
        full = state[key] * state[f"{m}.decay"].to(state[key].dtype)
        full[state[f"{m}.keep"]] = state[f"{m}.rows"].to(full.dtype)
        for n in ("rows", "frozen", "keep", "index", "decay"):
            out.pop(f"{m}.{n}")
        out[f"{m}.weight"] = full
    return out
