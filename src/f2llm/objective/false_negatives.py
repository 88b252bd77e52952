"""False-negative rules: which candidates of a contrastive row to drop before the cross-entropy.

Every rule returns a boolean mask shaped like the row's logits [B, N] (True: drop), never
dropping the row's own positive; `mask_logits` sets the dropped logits to -inf. Rows are
queries, columns candidates; `positive_col` [B] names each row's positive column (in-batch:
`offset + arange(B)`; hard negatives laid out as [positive, negatives]: zeros). Masks from
several rules combine with `|`.

`false_negative_masks` applies the rules the objective is configured with (`same_text`: a key
per text, `TrainBatch.keys`, gathered with the positives across ranks; `margin`: the model's
own detached cosine scores) once per step, at full width and on the final layer; the masks are
reused at every Matryoshka dim and layer. GradCache calls the objective once, on the detached
embeddings, so its masks are the plain step's. `guide` (GISTEmbed, `guided_mask`): a frozen guide
model's embeddings of the batch's texts (the `guide` config group), gathered like the positives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from f2llm.objective.contrastive import gather_rows


def positive_mask(shape: torch.Size | tuple[int, int], positive_col: Tensor) -> Tensor:
    """[B, N] with True at each row's positive column."""
    mask = torch.zeros(shape, dtype=torch.bool, device=positive_col.device)
    mask[torch.arange(shape[0], device=positive_col.device), positive_col] = True
    return mask


def _positive_scores(scores: Tensor, positive_col: Tensor) -> Tensor:
    return scores.gather(1, positive_col.view(-1, 1))


def equal_rows(a: Tensor, b: Tensor) -> Tensor:
    """[B, N]: whether row i of `a` equals row j of `b` exactly.

    Rows are token ids padded to one length with one pad id ([B, L], [N, L]), or one key per
    text ([B], [N], e.g. a hash of the text).
    """
    if a.dim() == 1:
        a, b = a.unsqueeze(1), b.unsqueeze(1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"token rows must share one padded length, got {a.shape[1]} and "
                         f"{b.shape[1]}")
    return (a.unsqueeze(1) == b.unsqueeze(0)).all(dim=-1)


def same_text_mask(equal_to_positive: Tensor, positive_col: Tensor) -> Tensor:
    """Drop every candidate whose text equals the row's positive (its own column kept).

    `equal_to_positive` [B, N]: candidate j is the same text as row i's positive, e.g.
    `equal_rows(positive_ids, candidate_ids)`. In bitext one English message is translated
    once per catalog, so its translations reappear in a batch as different rows' positives.
    """
    return equal_to_positive.bool() & ~positive_mask(equal_to_positive.shape, positive_col)


def margin_mask(scores: Tensor, positive_col: Tensor, margin: float = 0.1) -> Tensor:
    """Qwen3-Embedding's rule: drop a candidate whose similarity exceeds the positive's by
    more than `margin` (0.1 in the Qwen3-Embedding report, arXiv:2506.05176).

    `scores` [B, N] are the model's own cosine similarities (not divided by the temperature).
    """
    threshold = _positive_scores(scores, positive_col) + margin
    return (scores > threshold) & ~positive_mask(scores.shape, positive_col)


def guided_mask(
    guide_scores: Tensor,
    positive_col: Tensor | None,
    margin: float = 0.0,
    strategy: Literal["absolute", "relative"] = "absolute",
    guide_positive: Tensor | None = None,
) -> Tensor:
    """GISTEmbed's rule (sentence-transformers `GISTEmbedLoss`): drop a candidate the guide
    model scores above the positive, less a margin.

    absolute: drop if guide(q, c) > guide(q, p) - margin; relative: drop if
    guide(q, c) > guide(q, p) - |guide(q, p)| * margin. `guide_scores` [B, N] are the guide's
    cosine similarities for the same cells as the logits. `guide_positive` [B] is the
    threshold's guide(q, p) and defaults to the guide's score at `positive_col`; for a block
    without the positive (GISTEmbed's query-query and positive-positive blocks) pass it with
    `positive_col=None`, and nothing is protected.
    """
    if guide_positive is None:
        if positive_col is None:
            raise ValueError("guided_mask needs positive_col or guide_positive")
        guide_positive = _positive_scores(guide_scores, positive_col)
    guide_positive = guide_positive.view(-1, 1)
    if strategy == "absolute":
        threshold = guide_positive - margin
    elif strategy == "relative":
        threshold = guide_positive - guide_positive.abs() * margin
    else:
        raise ValueError(f"strategy must be 'absolute' or 'relative', got {strategy!r}")
    mask = guide_scores > threshold
    if positive_col is not None:
        mask &= ~positive_mask(guide_scores.shape, positive_col)
    return mask


def mask_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """The logits with dropped candidates at -inf (out of the softmax's denominator)."""
    return logits.masked_fill(mask, float("-inf"))


@dataclass
class FalseNegativeMasks:
    """Which candidates to drop (True) in the in-batch logits [B, global B] and in the
    hard-negative logits [B, 1 + K] (None: that term is off or no rule is on), and how many
    candidates each rule dropped in this rank's rows (a candidate two rules drop counts in
    both)."""

    inbatch: Tensor | None
    hard: Tensor | None
    dropped: dict[str, Tensor]


@torch.no_grad()
def false_negative_masks(
    query: Tensor,
    positive: Tensor,
    negatives: Tensor | None,
    use_inbatch: bool,
    same_text: bool = False,
    margin: float | None = None,
    keys: tuple[Tensor, Tensor | None] | None = None,
    gather: bool = True,
    guide: tuple[Tensor, Tensor, Tensor | None] | None = None,
    guide_margin: float = 0.0,
    guide_strategy: Literal["absolute", "relative"] = "absolute",
) -> FalseNegativeMasks:
    """The masks of the configured rules for one batch's full-width raw embeddings.

    `keys`: the positives' keys [B] and negatives' [B, K] (`TrainBatch.candidate_keys`), for
    `same_text`. `guide`: a guide model's embeddings of the same queries [B, G], positives
    [B, G] and negatives [B, K, G] (any width G), for GISTEmbed's rule (`guided_mask` with
    `guide_margin` and `guide_strategy`). With `gather` under torch.distributed the positives,
    their keys and their guide embeddings are gathered in `inbatch_loss`'s order, so the
    in-batch mask lines up with its logits.
    """
    if same_text and keys is None:
        raise ValueError("the same-text rule needs the batch's text keys")
    query, positive = query.detach(), positive.detach()
    inbatch = hard = None
    dropped: dict[str, Tensor] = {}

    def apply(name: str, rule: Tensor, mask: Tensor | None) -> Tensor:
        dropped[name] = dropped.get(name, torch.zeros((), device=rule.device)) + rule.sum()
        return rule if mask is None else mask | rule

    if use_inbatch:
        if gather:
            candidates, offset = gather_rows(positive)
        else:
            candidates, offset = positive, 0
        col = torch.arange(offset, offset + query.shape[0], device=query.device)
        if same_text:
            positive_keys = keys[0]
            all_keys = (gather_rows(positive_keys.view(-1, 1))[0].view(-1) if gather
                        else positive_keys)
            equal = equal_rows(positive_keys, all_keys)
            inbatch = apply("same_text", same_text_mask(equal, col), inbatch)
        if margin is not None:
            scores = F.normalize(query, dim=-1) @ F.normalize(candidates, dim=-1).T
            inbatch = apply("margin", margin_mask(scores, col, margin), inbatch)
        if guide is not None:
            guide_candidates = gather_rows(guide[1])[0] if gather else guide[1]
            scores = F.normalize(guide[0], dim=-1) @ F.normalize(guide_candidates, dim=-1).T
            inbatch = apply("guide", guided_mask(scores, col, guide_margin, guide_strategy),
                            inbatch)
    if negatives is not None:
        col = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
        if same_text:
            positive_keys, negative_keys = keys
            row_keys = torch.cat([positive_keys.view(-1, 1), negative_keys], dim=1)
            equal = row_keys == positive_keys.view(-1, 1)
            hard = apply("same_text", same_text_mask(equal, col), hard)
        if margin is not None:
            candidates = torch.cat([positive.unsqueeze(1), negatives.detach()], dim=1)
            scores = torch.einsum("bd,bkd->bk", F.normalize(query, dim=-1),
                                  F.normalize(candidates, dim=-1))
            hard = apply("margin", margin_mask(scores, col, margin), hard)
        if guide is not None:
            if guide[2] is None:
                raise ValueError("the guide's embeddings lack the batch's negatives")
            candidates = torch.cat([guide[1].unsqueeze(1), guide[2]], dim=1)
            scores = torch.einsum("bd,bkd->bk", F.normalize(guide[0], dim=-1),
                                  F.normalize(candidates, dim=-1))
            hard = apply("guide", guided_mask(scores, col, guide_margin, guide_strategy), hard)
    return FalseNegativeMasks(inbatch, hard, dropped)
