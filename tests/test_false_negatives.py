"""False-negative masks: each rule on hand-made scores, and GISTEmbed's rule equal to
sentence-transformers' `GISTEmbedLoss` on the same tensors (also where it coincides with the
Qwen3-Embedding margin rule: the model as its own guide)."""

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
from tests.test_model import tiny_encoder

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
