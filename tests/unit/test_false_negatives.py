"""False-negative masks: each rule on hand-made scores, and GISTEmbed's rule equal to
sentence-transformers' `GISTEmbedLoss` on the same tensors (also where it coincides with the
Qwen3-Embedding margin rule: the model as its own guide); the rules wired into the objective in
one process (gathered over two gloo ranks: tests/distributed/test_false_negatives.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss

from f2llm.export import export_sentence_transformers
from f2llm.objective.contrastive import cosine_logits
from f2llm.objective.false_negatives import (
    equal_rows,
    guided_mask,
    margin_mask,
    mask_logits,
    same_text_mask,
)
from tests.conftest import one_group_plan, tiny_encoder

INBATCH = torch.arange(3)


def test_same_text_masks_duplicates_of_the_positive_but_not_the_positive() -> None:
    # Row 0's and row 2's positives are the same English message (token ids, padded with 0).
    positives = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [5, 6, 7, 0]])
    equal = equal_rows(positives, positives)
    mask = same_text_mask(equal, INBATCH)
    assert mask.tolist() == [[False, False, True], [False, False, False], [True, False, False]]
    # One key per text gives the same mask.
    keys = torch.tensor([11, 42, 11])
    assert torch.equal(same_text_mask(equal_rows(keys, keys), INBATCH), mask)
    logits = mask_logits(torch.zeros(3, 3), mask)
    assert logits[0, 2] == float("-inf") and logits[0, 0] == 0
    with pytest.raises(ValueError, match="padded length"):
        equal_rows(positives, positives[:, :3])


def test_margin_rule_drops_only_candidates_above_positive_plus_margin() -> None:
    scores = torch.tensor([[0.50, 0.55, 0.61, 0.70],
                           [0.90, 0.20, 0.99, 1.00]])
    positive_col = torch.tensor([0, 2])
    mask = margin_mask(scores, positive_col, margin=0.1)
    # Row 0: 0.70 > 0.60 dropped, 0.61 > 0.60 dropped, 0.55 kept. Row 1: nothing above 1.09.
    assert mask.tolist() == [[False, False, True, True], [False, False, False, False]]
    # A positive far above everything is never dropped, even at a negative margin.
    assert not margin_mask(scores, positive_col, margin=-5.0)[[0, 1], positive_col].any()


def test_guided_rule_strategies() -> None:
    guide = torch.tensor([[0.8, 0.79, 0.5, 0.85]])
    col = torch.tensor([0])
    assert guided_mask(guide, col, margin=0.0).tolist() == [[False, False, False, True]]
    assert guided_mask(guide, col, margin=0.02).tolist() == [[False, True, False, True]]
    # relative: threshold 0.8 - 0.8 * 0.5 = 0.4
    assert guided_mask(guide, col, 0.5, "relative").tolist() == [[False, True, True, True]]
    # A block without the positive: threshold given, nothing protected.
    assert guided_mask(guide, None, guide_positive=torch.tensor([0.7])).tolist() == [
        [True, True, False, True]]
    with pytest.raises(ValueError, match="strategy"):
        guided_mask(guide, col, strategy="other")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[SentenceTransformer, ...]:
    """A tiny exported model and a perturbed copy as its guide."""
    tmp = tmp_path_factory.mktemp("st")
    return _st(tmp, "model", 0), _st(tmp, "guide", 1)


def _st(tmp: Path, name: str, seed: int) -> SentenceTransformer:
    torch.manual_seed(seed)
    enc = tiny_encoder()
    if seed:
        with torch.no_grad():
            for p in enc.parameters():
                p.add_(torch.randn_like(p) * 0.5)
    return SentenceTransformer(str(export_sentence_transformers(enc, tmp / name)), device="cpu")


# Duplicates on purpose: "Open file" is row 0's and row 2's positive.
ANCHORS = ["Fichier introuvable", "Datei speichern", "Ouvrir le fichier", "Файл"]
POSITIVES = ["File not found", "Save file", "File not found", "File"]
NEGATIVES = ["Folder", "Cannot save", "Open folder", "Open file"]


def _embed(model: SentenceTransformer, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return model(model.tokenize(texts))["sentence_embedding"]


def _ours(model: SentenceTransformer, guide: SentenceTransformer, tau: float,
          margin: float, strategy: str) -> tuple[torch.Tensor, int]:
    """GISTEmbed's loss built from our masks: blocks [q·p | q·q | p·p | q·n]; and how many
    query-positive and query-negative cells the rule dropped."""
    q, p, n = (_embed(model, t) for t in (ANCHORS, POSITIVES, NEGATIVES))
    gq, gp, gn = (_embed(guide, t) for t in (ANCHORS, POSITIVES, NEGATIVES))
    cols = torch.arange(len(ANCHORS))
    # The threshold from the same matrix cells as GISTEmbed's (a duplicate positive ties it).
    guide_pos = cosine_logits(gq, gp, 1.0).diagonal()
    blocks, dropped = [], 0
    for (a, b, ga, gb, protect) in ((q, p, gq, gp, cols), (q, q, gq, gq, None),
                                    (p, p, gp, gp, None), (q, n, gq, gn, None)):
        mask = guided_mask(cosine_logits(ga, gb, 1.0), protect, margin, strategy,  # type: ignore[arg-type]
                           guide_positive=guide_pos)
        blocks.append(mask_logits(cosine_logits(a, b, tau), mask))
        dropped += int(mask.sum()) if (a is q and b is p) or b is n else 0
    return F.cross_entropy(torch.cat(blocks, dim=1), cols), dropped


def _theirs(model: SentenceTransformer, guide: SentenceTransformer, tau: float,
            margin: float, strategy: str) -> torch.Tensor:
    loss = GISTEmbedLoss(model, guide, temperature=tau, margin=margin, margin_strategy=strategy)
    features = [model.tokenize(t) for t in (ANCHORS, POSITIVES, NEGATIVES)]
    with torch.no_grad():
        return loss(features, torch.zeros(len(ANCHORS)))


@pytest.mark.parametrize(("margin", "strategy"), [(0.0, "absolute"), (0.05, "absolute"),
                                                  (0.1, "relative")])
def test_guided_rule_equals_gistembed_loss(models: tuple[SentenceTransformer, ...], margin: float,
                                           strategy: str) -> None:
    model, guide = models
    ours, dropped = _ours(model, guide, 0.05, margin, strategy)
    theirs = _theirs(model, guide, 0.05, margin, strategy)
    assert torch.isfinite(ours)
    # The rule drops some cells, not all: the comparison exercises the mask.
    assert 0 < dropped < 2 * len(ANCHORS) ** 2
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_margin_rule_is_gistembed_with_the_model_as_guide(
        models: tuple[SentenceTransformer, ...]) -> None:
    """Qwen3-Embedding's rule (drop s(q, c) > s(q, p) + 0.1) = GISTEmbed, absolute margin -0.1,
    the model guiding itself, on the query-positive and query-negative blocks."""
    model = models[1]
    q, p, n = (_embed(model, t) for t in (ANCHORS, POSITIVES, NEGATIVES))
    cols = torch.arange(len(ANCHORS))
    scores = torch.cat([cosine_logits(q, p, 1.0), cosine_logits(q, n, 1.0)], dim=1)
    ours = F.cross_entropy(mask_logits(scores / 0.05, margin_mask(scores, cols, 0.1)), cols)
    loss = GISTEmbedLoss(model, model, temperature=0.05, margin=-0.1, contrast_anchors=False,
                         contrast_positives=False)
    with torch.no_grad():
        theirs = loss([model.tokenize(t) for t in (ANCHORS, POSITIVES, NEGATIVES)],
                      torch.zeros(len(ANCHORS)))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert 0 < int(margin_mask(scores, cols, 0.1).sum()) < scores.numel() - len(ANCHORS)


# ---- the rules wired into the objective --------------------------------------------------------

B, K, D = 6, 2, 32
TAU = 0.05


def _embeddings(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(B, D, generator=g, dtype=torch.float64)
    # Positives near their queries, negatives near them too: the margin rule has work to do.
    positive = query + 0.8 * torch.randn(B, D, generator=g, dtype=torch.float64)
    negatives = query[:, None] + 0.7 * torch.randn(B, K, D, generator=g, dtype=torch.float64)
    return query, positive, negatives


# Rows 0, 3 and 5 share one positive text; row 2's first negative is its own positive's text.
POSITIVE_KEYS = torch.tensor([7, 1, 2, 7, 4, 7])
NEGATIVE_KEYS = torch.tensor([[10, 11], [12, 13], [2, 14], [15, 16], [17, 18], [19, 20]])


def _reference(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
               inbatch_drop: torch.Tensor, hard_drop: torch.Tensor, dim: int) -> torch.Tensor:
    """In-batch + hard-negative InfoNCE at `dim`, written out row by row, leaving out the
    dropped candidates."""
    q = F.normalize(query[:, :dim], dim=-1)
    p = F.normalize(positive[:, :dim], dim=-1)
    n = F.normalize(negatives[..., :dim], dim=-1)
    inbatch, hard = [], []
    for i in range(B):
        kept = [j for j in range(B) if not inbatch_drop[i, j]]
        s = torch.stack([q[i] @ p[j] for j in kept]) / TAU
        inbatch.append(torch.logsumexp(s, 0) - q[i] @ p[i] / TAU)
        cand = [p[i]] + [n[i, k] for k in range(K) if not hard_drop[i, k + 1]]
        s = torch.stack([q[i] @ c for c in cand]) / TAU
        hard.append(torch.logsumexp(s, 0) - s[0])
    return torch.stack(inbatch).mean() + torch.stack(hard).mean()


def _full_width_margin_drops(query: torch.Tensor, positive: torch.Tensor,
                             negatives: torch.Tensor, margin: float
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    q, p = F.normalize(query, dim=-1), F.normalize(positive, dim=-1)
    n = F.normalize(negatives, dim=-1)
    inbatch = q @ p.T
    inbatch = (inbatch > inbatch.diagonal()[:, None] + margin) & ~torch.eye(B, dtype=torch.bool)
    pos = (q * p).sum(-1, keepdim=True)
    hard = torch.cat([torch.zeros(B, 1, dtype=torch.bool),
                      torch.einsum("bd,bkd->bk", q, n) > pos + margin], dim=1)
    return inbatch, hard


@pytest.mark.parametrize("same_text, margin", [(True, None), (False, 0.0), (True, -0.1)],
                         ids=["same_text", "margin", "both"])
def test_objective_drops_what_the_rules_say_at_every_dim(same_text: bool,
                                                         margin: float | None) -> None:
    from f2llm.objective import F2LLMObjective

    query, positive, negatives = _embeddings()
    dims, weights = [32, 16, 8], [1.0, 0.5, 0.25]
    objective = F2LLMObjective(tau=TAU, mrl_dims=dims, mrl_weights=weights,
                               mask_same_text=same_text, false_negative_margin=margin)
    loss, logs = objective(query, positive, negatives, use_inbatch=True,
                           keys=(POSITIVE_KEYS, NEGATIVE_KEYS))

    inbatch_drop = torch.zeros(B, B, dtype=torch.bool)
    hard_drop = torch.zeros(B, 1 + K, dtype=torch.bool)
    if same_text:
        same = POSITIVE_KEYS[:, None] == POSITIVE_KEYS[None]
        inbatch_drop |= same & ~torch.eye(B, dtype=torch.bool)
        hard_drop[:, 1:] |= POSITIVE_KEYS[:, None] == NEGATIVE_KEYS
        assert logs["dropped/same_text"] == inbatch_drop.sum() + hard_drop.sum() == 7
    if margin is not None:
        # The masks come from the full width and are reused at the smaller dims.
        margin_inbatch, margin_hard = _full_width_margin_drops(query, positive, negatives, margin)
        assert logs["dropped/margin"] == margin_inbatch.sum() + margin_hard.sum() > 0
        inbatch_drop |= margin_inbatch
        hard_drop |= margin_hard
    per_dim = [_reference(query, positive, negatives, inbatch_drop, hard_drop, d) for d in dims]
    for d, expected in zip(dims, per_dim, strict=True):
        torch.testing.assert_close(logs[f"loss@{d}"], expected)
    torch.testing.assert_close(loss, sum(w * v for w, v in zip(weights, per_dim, strict=True)))
    # Off, nothing is dropped: the loss differs.
    plain, plain_logs = F2LLMObjective(tau=TAU, mrl_dims=dims, mrl_weights=weights)(
        query, positive, negatives, use_inbatch=True)
    assert (plain - loss).abs() > 1e-6 and not any(k.startswith("dropped") for k in plain_logs)


def _guide(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, width: int = 12
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A guide model's embeddings of the same texts, of another width: a fixed random
    projection of the model's plus noise, so guide and model agree only roughly."""
    g = torch.Generator().manual_seed(3)
    project = torch.randn(D, width, generator=g, dtype=torch.float64)
    return tuple((x.detach() @ project) + 0.5 * torch.randn(*x.shape[:-1], width, generator=g,
                                                            dtype=torch.float64)
                 for x in (query, positive, negatives))


@pytest.mark.parametrize("margin, strategy", [(0.0, "absolute"), (0.1, "absolute"),
                                              (0.3, "relative")])
def test_objective_drops_what_the_guide_says_at_every_dim(margin: float, strategy: str) -> None:
    """GISTEmbed's rule in the objective: a candidate the guide scores above the positive, less
    the margin, leaves the in-batch and the hard-negative softmax at every dim."""
    from f2llm.objective import F2LLMObjective

    query, positive, negatives = _embeddings()
    gq, gp, gn = _guide(query, positive, negatives)
    dims, weights = [32, 16, 8], [1.0, 0.5, 0.25]
    objective = F2LLMObjective(tau=TAU, mrl_dims=dims, mrl_weights=weights, guide_margin=margin,
                               guide_strategy=strategy)
    loss, logs = objective(query, positive, negatives, use_inbatch=True, guide=(gq, gp, gn))

    q, p, n = (F.normalize(x, dim=-1) for x in (gq, gp, gn))
    pos = (q * p).sum(-1, keepdim=True)
    threshold = pos - margin if strategy == "absolute" else pos - pos.abs() * margin
    inbatch_drop = (q @ p.T > threshold) & ~torch.eye(B, dtype=torch.bool)
    hard_drop = torch.cat([torch.zeros(B, 1, dtype=torch.bool),
                           torch.einsum("bd,bkd->bk", q, n) > threshold], dim=1)
    assert logs["dropped/guide"] == inbatch_drop.sum() + hard_drop.sum() > 0
    per_dim = [_reference(query, positive, negatives, inbatch_drop, hard_drop, d) for d in dims]
    for d, expected in zip(dims, per_dim, strict=True):
        torch.testing.assert_close(logs[f"loss@{d}"], expected)
    torch.testing.assert_close(loss, sum(w * v for w, v in zip(weights, per_dim, strict=True)))


def test_the_model_as_its_own_guide_is_the_margin_rule() -> None:
    """drop if guide(q, c) > guide(q, p) - m  is  drop if s(q, c) > s(q, p) + margin  with the
    model as guide and m = -margin: the same loss and the same drops."""
    from f2llm.objective import F2LLMObjective

    query, positive, negatives = _embeddings(2)
    common = {"tau": TAU, "mrl_dims": [32, 8], "mrl_weights": [1.0, 0.5]}
    guided, guided_logs = F2LLMObjective(**common, guide_margin=-0.1)(
        query, positive, negatives, use_inbatch=True, guide=(query, positive, negatives))
    margin, margin_logs = F2LLMObjective(**common, false_negative_margin=0.1)(
        query, positive, negatives, use_inbatch=True)
    torch.testing.assert_close(guided, margin)
    assert guided_logs["dropped/guide"] == margin_logs["dropped/margin"] > 0


def test_a_guide_with_another_tokenizer_is_a_clear_error() -> None:
    from transformers import AutoTokenizer

    from f2llm.eval import minilm_folder
    from f2llm.model.frozen import check_same_tokenizer
    from f2llm.model.tokenizer import load_tokenizer

    qwen = load_tokenizer(None)
    check_same_tokenizer(load_tokenizer(None), qwen, "guide.path")  # the same: no error
    bert = AutoTokenizer.from_pretrained(str(minilm_folder()))
    with pytest.raises(ValueError, match=r"guide.path: the model's tokenizer .* differs"):
        check_same_tokenizer(bert, qwen, "guide.path")


def test_masks_are_detached_and_keep_the_gradient_of_kept_candidates() -> None:
    from f2llm.objective import F2LLMObjective

    query, positive, negatives = (x.requires_grad_() for x in _embeddings())
    objective = F2LLMObjective(tau=TAU, mrl_dims=[32], mrl_weights=[1.0], mask_same_text=True)
    loss, _ = objective(query, positive, negatives, use_inbatch=True,
                        keys=(POSITIVE_KEYS, NEGATIVE_KEYS))
    loss.backward()
    assert torch.isfinite(loss)
    # Row 2's first negative is dropped from row 2's softmax: no gradient reaches it.
    assert negatives.grad[2, 0].abs().max() == 0
    assert negatives.grad[2, 1].abs().max() > 0 and torch.isfinite(positive.grad).all()


def test_same_text_rule_needs_keys() -> None:
    from f2llm.objective import F2LLMObjective

    query, positive, negatives = _embeddings()
    with pytest.raises(ValueError, match="text keys"):
        F2LLMObjective(mask_same_text=True)(query, positive, negatives, use_inbatch=True)


def test_datamodule_batches_carry_one_key_per_positive_and_negative() -> None:
    import numpy as np
    import pyarrow as pa

    from f2llm.data.corpus import TrainingDataset
    from f2llm.data.datamodule import TrainBatches
    from f2llm.model import TruncatingTokenizer

    encoder = tiny_encoder()
    table = pa.table({"query": ["a b", "c d", "e f"],
                      "passage": ["same message", "other", "same message"],
                      "negative_1": ["x", "same message", "y"]})
    plan = one_group_plan(table, TrainingDataset("toy", None, "retrieval"), instructions=False,
                          num_negatives={"retrieval": 1})
    items = TrainBatches(plan, TruncatingTokenizer(encoder.tokenizer, 512), encoder.format_query,
                         64)
    batch = items[{"group": "toy/xx", "indices": np.arange(3), "stage": "s", "epoch": 0,
                   "position": 0}]
    positive_keys, negative_keys = batch.candidate_keys()
    assert positive_keys.shape == (3,) and negative_keys.shape == (3, 1)
    assert positive_keys[0] == positive_keys[2] == negative_keys[1, 0]
    assert len({int(positive_keys[0]), int(positive_keys[1]), int(negative_keys[0, 0]),
                int(negative_keys[2, 0])}) == 4
    assert batch.to("cpu").keys is not None
