"""Evaluation metrics equal sentence-transformers' evaluators on the same embeddings; clustering,
classification and the Matryoshka figure on toy sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread
from sentence_transformers import SentenceTransformer
from sentence_transformers.evaluation import InformationRetrievalEvaluator, TranslationEvaluator

from f2llm.evaluation import (
    bitext_accuracy,
    bitext_scores,
    clustering_scores,
    figure_to_array,
    linear_probe_accuracy,
    matryoshka_figure,
    nearest_label_accuracy,
    retrieval_scores,
    save_figure,
    scores_by_dim,
    two_way_accuracy,
)
from f2llm.export import export_sentence_transformers
from tests.conftest import texts, tiny_encoder, toy_retrieval

DIMS = [8, 16, 32]
@pytest.fixture(scope="module")
def st_model(tmp_path_factory: pytest.TempPathFactory) -> SentenceTransformer:
    """The tiny random encoder, exported and loaded by sentence-transformers."""
    path = export_sentence_transformers(tiny_encoder(), tmp_path_factory.mktemp("st") / "tiny")
    return SentenceTransformer(str(path), device="cpu")



def test_retrieval_matches_information_retrieval_evaluator(st_model: SentenceTransformer) -> None:
    queries, corpus, relevant = toy_retrieval()
    q_emb = st_model.encode(queries, convert_to_tensor=True)
    c_emb = st_model.encode(corpus, convert_to_tensor=True)
    ours = retrieval_scores(q_emb, c_emb, relevant, DIMS)
    for dim in DIMS:
        evaluator = InformationRetrievalEvaluator(
            queries={f"q{i:02d}": t for i, t in enumerate(queries)},
            corpus={f"c{i:02d}": t for i, t in enumerate(corpus)},
            relevant_docs={f"q{q:02d}": {f"c{d:02d}" for d in docs}
                           for q, docs in relevant.items()},
            mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1], precision_recall_at_k=[1, 5, 10],
            map_at_k=[10], truncate_dim=dim, write_csv=False,
        )
        theirs = evaluator(st_model)
        expected = {
            f"ndcg_at_10@{dim}": theirs["cosine_ndcg@10"],
            f"mrr_at_10@{dim}": theirs["cosine_mrr@10"],
            **{f"recall_at_{k}@{dim}": theirs[f"cosine_recall@{k}"] for k in (1, 5, 10)},
        }
        got = {key: ours[key] for key in expected}
        assert got == pytest.approx(expected, abs=1e-6)
    # Not a degenerate comparison: some relevant documents fall outside the top 10.
    assert 0 < ours["ndcg_at_10@32"] < 1 and ours["recall_at_10@32"] < 1


def test_retrieval_perfect_and_truncated() -> None:
    torch.manual_seed(0)
    corpus = torch.randn(30, 16)
    # The first 8 channels of each query are noise, the rest copy its document's.
    queries = torch.cat([torch.randn(30, 8), corpus[:, 8:]], dim=1)
    scores = retrieval_scores(queries, corpus, {i: {i} for i in range(30)}, [8, 16])
    assert scores["ndcg_at_10@16"] > scores["ndcg_at_10@8"]
    exact = retrieval_scores(corpus, corpus, {i: {i} for i in range(30)}, [16])
    assert all(v == pytest.approx(1.0) for v in exact.values())


def test_bitext_matches_translation_evaluator(st_model: SentenceTransformer) -> None:
    source = texts(30, seed=2)
    # A "translation" drops the first word and adds one: the random model finds some of them.
    target = [" ".join([*text.split()[1:], "ok"]) for text in source]
    s_emb = st_model.encode(source, convert_to_tensor=True)
    t_emb = st_model.encode(target, convert_to_tensor=True)
    ours = bitext_scores(s_emb, t_emb, DIMS)
    for dim in DIMS:
        theirs = TranslationEvaluator(source, target, truncate_dim=dim, write_csv=False)(st_model)
        assert ours[f"accuracy_s2t@{dim}"] == pytest.approx(theirs["src2trg_accuracy"])
        assert ours[f"accuracy_t2s@{dim}"] == pytest.approx(theirs["trg2src_accuracy"])
        assert ours[f"accuracy@{dim}"] == pytest.approx(theirs["mean_accuracy"])
        assert ours[f"accuracy@{dim}"] == pytest.approx(
            bitext_accuracy(s_emb[:, :dim], t_emb[:, :dim]))
    assert 0 < ours["accuracy@32"] < 1 and ours["accuracy_s2t@32"] != ours["accuracy_t2s@32"]


def _blobs(n_clusters: int, per_cluster: int, dim: int, seed: int) -> tuple[torch.Tensor, list]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=g) * 5
    labels = [c for c in range(n_clusters) for _ in range(per_cluster)]
    points = centres[labels] + 0.05 * torch.randn(len(labels), dim, generator=g)
    return points, labels


def test_v_measure_separable_and_shuffled() -> None:
    points, labels = _blobs(5, 12, 32, seed=0)
    scores = clustering_scores(points, labels, DIMS)
    assert all(scores[f"v_measure@{d}"] == pytest.approx(1.0) for d in DIMS)
    shuffled = list(np.random.default_rng(0).permutation(labels))
    assert clustering_scores(points, shuffled, [32])["v_measure@32"] < 0.3
    # String labels, clustered per group (e.g. per language), averaged; deterministic by seed.
    other, other_labels = _blobs(3, 10, 32, seed=1)
    both = torch.cat([points, other])
    names = [f"c{x}" for x in labels + other_labels]
    groups = ["fr"] * len(labels) + ["de"] * len(other_labels)
    grouped = clustering_scores(both, names, [16], groups=groups)
    assert grouped == {"v_measure@16": pytest.approx(1.0)}
    noisy = torch.randn(60, 32, generator=torch.Generator().manual_seed(2))
    assert clustering_scores(noisy, labels, [8]) == clustering_scores(noisy, labels, [8])


def test_classification_accuracy() -> None:
    g = torch.Generator().manual_seed(0)
    label_emb = torch.randn(2, 32, generator=g)
    gold = torch.randint(0, 2, (40,), generator=g)
    texts = label_emb[gold] + 0.3 * torch.randn(40, 32, generator=g)
    near = nearest_label_accuracy(texts, label_emb, gold, DIMS)
    assert near == {f"accuracy@{d}": 1.0 for d in DIMS}
    assert nearest_label_accuracy(texts, label_emb, 1 - gold, [32]) == {"accuracy@32": 0.0}
    # The record format (text, matching label, other label) scores the same.
    assert two_way_accuracy(texts, label_emb[gold], label_emb[1 - gold], DIMS) == near
    # Hand-checked: rows 0 and 1 right, row 2 wrong (closer to its negative).
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    pos = torch.tensor([[1.0, 0.2], [0.1, 1.0], [0.0, 1.0]])
    neg = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    assert two_way_accuracy(t, pos, neg, [2]) == {"accuracy@2": pytest.approx(2 / 3)}
    probe = linear_probe_accuracy(texts[:30], gold[:30], texts[30:], gold[30:], [8, 32])
    assert probe == {"linear_probe_accuracy@8": 1.0, "linear_probe_accuracy@32": 1.0}


def test_matryoshka_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flat = {"accuracy@8": 0.2, "accuracy@32": 0.6, "accuracy_s2t@8": 0.1, "accuracy@16": 0.5}
    assert scores_by_dim(flat, "accuracy") == {8: 0.2, 16: 0.5, 32: 0.6}
    scores = {"bitext": scores_by_dim(flat, "accuracy"), "clustering": {8: 0.1, 32: 0.4}}
    fig = matryoshka_figure(scores, title="step 10")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [line.get_label() for line in ax.get_lines()] == ["bitext", "clustering"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["8", "16", "32"]
    image = figure_to_array(fig)
    assert image.dtype == np.uint8 and image.shape == (400, 640, 3)
    assert image.min() < 128 < image.max()  # something was drawn on the white background
    draws = []
    draw = FigureCanvasAgg.draw
    monkeypatch.setattr(FigureCanvasAgg, "draw", lambda self: (draws.append(1), draw(self))[1])
    path = save_figure(fig, tmp_path / "plots" / "matryoshka.png")
    assert not draws  # drawn once, by figure_to_array
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Drawn once for the array and the PNG: the PNG's pixels are those savefig draws again.
    fig.savefig(tmp_path / "savefig.png", format="png")
    np.testing.assert_array_equal(imread(path), imread(tmp_path / "savefig.png"))
    assert (imread(path)[..., :3] * 255).round().astype(np.uint8).tolist() == image.tolist()
