"""Matryoshka over layers: the encoder's intermediate-layer embeddings are those of the model cut
to its first layers, the objective's layer weighting equals sentence-transformers'
`AdaptiveLayerLoss` on the same tensors, GradCache equals the plain step with layers and
false-negative rules on (a training run logs the per-layer losses and dropped counts:
tests/commands/test_layer_matryoshka.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import (
    AdaptiveLayerLoss,
    MultipleNegativesRankingLoss,
)

from f2llm.export import export_sentence_transformers
from f2llm.model.frozen import FrozenEncoder
from f2llm.objective import F2LLMObjective, gradcache_step
from f2llm.pruning import prune_backbone
from tests.conftest import (
    collated_batches,
    copy_encoder,
    grads,
    texts,
    tiny_encoder,
)

DEPTH = 3
TAU = 0.05


def test_layer_embeddings_are_those_of_the_model_cut_to_its_first_layers() -> None:
    encoder = tiny_encoder(layers=DEPTH).eval()
    batch = encoder.tokenize(texts(6, seed=1))
    with torch.no_grad():
        stacked = encoder(**batch, layers=[1, 2])
        full = encoder(**batch)
        assert stacked.shape == (6, 3, encoder.hidden_size)
        torch.testing.assert_close(stacked[:, 0], full)
        for j, keep in enumerate([1, 2], start=1):
            cut = copy_encoder(encoder)
            # The project's pruning, first-k layers: the final norm stays.
            prune_backbone(cut.backbone, {"num_hidden_layers": keep}, method="first_k")
            torch.testing.assert_close(stacked[:, j], cut(**batch), rtol=1e-5, atol=1e-6)
        assert (stacked[:, 1] - stacked[:, 2]).abs().max() > 1e-3


def test_layers_must_lie_below_the_last() -> None:
    encoder = tiny_encoder(layers=DEPTH)
    batch = encoder.tokenize(["a", "b"])
    for bad in ([0], [DEPTH], [1, DEPTH + 2]):
        with pytest.raises(ValueError, match="not decoder layers"):
            encoder(**batch, layers=bad)
    q = torch.randn(2, 32)
    with pytest.raises(ValueError, match="layer axis"):
        F2LLMObjective(layers=[1])(q, q, None, use_inbatch=True)
    with pytest.raises(ValueError, match="pair by position"):
        F2LLMObjective(layers=[1, 2], layer_weights=[1.0])


def test_objective_sums_weighted_layer_losses() -> None:
    g = torch.Generator().manual_seed(0)
    query, positive = torch.randn(5, 3, 32, generator=g), torch.randn(5, 3, 32, generator=g)
    negatives = torch.randn(5, 2, 3, 32, generator=g)
    plain = F2LLMObjective()
    objective = F2LLMObjective(layers=[1, 2])  # default weights: 1/2 each
    loss, logs = objective(query, positive, negatives, use_inbatch=True)
    per_layer = [plain(query[:, j], positive[:, j], negatives[:, :, j], use_inbatch=True)[0]
                 for j in range(3)]
    torch.testing.assert_close(loss, per_layer[0] + 0.5 * per_layer[1] + 0.5 * per_layer[2])
    torch.testing.assert_close(logs["loss@layer1"], per_layer[1])
    torch.testing.assert_close(logs["loss@layer2"], per_layer[2])
    # The per-dim logs are the final layer's.
    final_logs = plain(query[:, 0], positive[:, 0], negatives[:, :, 0], use_inbatch=True)[1]
    torch.testing.assert_close(logs["loss@32"], final_logs["loss@32"])


ANCHORS = ["Fichier introuvable", "Datei speichern", "Ouvrir le fichier", "Файл", "Ayuda"]
POSITIVES = ["File not found", "Save file", "Open file", "File", "Help"]


@pytest.mark.parametrize("weighting", ["uniform", "linear", "log"])
def test_layer_weighting_equals_adaptive_layer_loss(tmp_path: Path, weighting: str) -> None:
    """Comparable means: AdaptiveLayerLoss over every layer each step (`n_layers_per_step=-1`,
    no random sampling), no KL term (`kl_div_weight=0`, `kl_temperature=0`), MNRL as the base
    loss (= our in-batch term, one Matryoshka dim), and the same per-layer embeddings: theirs
    are `hidden_states[i]` pooled without the final norm (i = 0..L-1, 0 the embedding layer),
    so the test feeds our objective those tensors; our encoder norms them (see
    `Encoder.layer_embeddings`), which the test above checks separately."""
    exported = export_sentence_transformers(tiny_encoder(layers=DEPTH), tmp_path / "m")
    # float64: the sums in two orders agree
    st = SentenceTransformer(str(exported), device="cpu").double()
    prior = 0.7
    adaptive = AdaptiveLayerLoss(st, MultipleNegativesRankingLoss(st, scale=1 / TAU),
                                 n_layers_per_step=-1, last_layer_weight=1.0,
                                 prior_layers_weight=prior, kl_div_weight=0.0, kl_temperature=0.0,
                                 layer_weighting=weighting)
    features = [st.preprocess(ANCHORS), st.preprocess(POSITIVES)]
    theirs = adaptive([dict(f) for f in features], torch.zeros(len(ANCHORS)))
    theirs.backward()
    their_grads = {n: p.grad.clone() for n, p in st.named_parameters() if p.grad is not None}
    st.zero_grad(set_to_none=True)

    def per_layer(feature: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, 1 + L, D]: the final embedding, then layers 0..L-1 as AdaptiveLayerLoss pools
        them (the model's later modules on `hidden_states[i]`)."""
        st[0].auto_model.config.output_hidden_states = True
        try:
            out = st[0](dict(feature))
        finally:
            st[0].auto_model.config.output_hidden_states = False
        rest = torch.nn.Sequential(*list(st)[1:])
        final = rest(dict(out))["sentence_embedding"]
        layers = [rest({**out, "token_embeddings": out["all_layer_embeddings"][i]})
                  ["sentence_embedding"] for i in range(DEPTH)]
        return torch.stack([final, *layers], dim=1)

    weights = [prior * adaptive.get_layer_weight(i) / DEPTH for i in range(DEPTH)]
    width = st.get_embedding_dimension()
    ours_fn = F2LLMObjective(tau=TAU, mrl_dims=[width], mrl_weights=[1.0],
                             layers=list(range(DEPTH)), layer_weights=weights)
    ours, _ = ours_fn(per_layer(features[0]), per_layer(features[1]), None, use_inbatch=True)
    ours.backward()
    torch.testing.assert_close(ours.detach(), theirs.detach())
    for name, grad in their_grads.items():
        torch.testing.assert_close(dict(st.named_parameters())[name].grad, grad, msg=name)


def plain_step(encoder, objective: F2LLMObjective, batch, guide=None
               ) -> tuple[torch.Tensor, dict]:
    """The module's plain training step (`F2LLMModule.training_step`) without Lightning."""
    emb = encoder.forward_chunks(batch.chunks, batch.restore, layers=objective.layers)
    loss, logs = objective.on_batch(emb, batch, guide=guide)
    loss.backward()
    return loss.detach(), logs


@pytest.mark.parametrize("options", [
    {"mask_same_text": True, "false_negative_margin": -0.05},
    {"layers": [1, 2]},
    {"layers": [2], "layer_weights": [0.3], "mask_same_text": True, "false_negative_margin": 0.0},
    {"guide_margin": 0.02},
], ids=["rules", "layers", "both", "guide"])
def test_gradcache_equals_plain_step_with_options_on(options: dict) -> None:
    encoder = tiny_encoder(layers=DEPTH)
    (batch,) = collated_batches(encoder, "retrieval", count=1)
    assert len(batch.chunks) >= 3
    guide = None
    if "guide_margin" in options:  # a one-layer guide of the same tokenizer (GISTEmbed's rule)
        guide = FrozenEncoder(tiny_encoder(layers=1), mode="online").embed(batch.chunks,
                                                                           batch.restore)
    objective = F2LLMObjective(**options)
    plain_loss, plain_logs = plain_step(encoder, objective, batch, guide)
    plain_grads = grads(encoder)
    encoder.zero_grad(set_to_none=True)
    cached_loss, cached_logs = gradcache_step(encoder, objective, batch, guide=guide)
    torch.testing.assert_close(cached_loss, plain_loss, rtol=1e-6, atol=1e-6)
    assert plain_logs.keys() == cached_logs.keys()
    for key in plain_logs:
        torch.testing.assert_close(cached_logs[key], plain_logs[key], rtol=1e-5, atol=1e-6)
    for name, grad in grads(encoder).items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    if "false_negative_margin" in options:
        assert plain_logs["dropped/margin"] > 0  # the rule was exercised
    if guide is not None:
        assert plain_logs["dropped/guide"] > 0
    # Without the options the loss differs: they did something (the weights are unchanged:
    # no step was taken).
    plain_off = plain_step(encoder, F2LLMObjective(), batch)[0]
    assert (plain_off - plain_loss).abs() > 1e-6


