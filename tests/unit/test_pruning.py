"""Pruning: importance finds what matters, slicing reaches the published shapes and reloads."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor
from transformers import AutoModel, PreTrainedModel

from f2llm.model import build_backbone, build_encoder, qwen3_config
from f2llm.pruning import (
    KEPT,
    PRUNABLE,
    Importance,
    collect_importance,
    encoder_importance,
    heads_to_keep,
    plan_pruning,
    prune_backbone,
    prune_in_steps,
    step_targets,
)
from tests.conftest import PUBLISHED, model_config

SMALL = {
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 48,
}


def small_backbone(**overrides: object) -> PreTrainedModel:
    torch.manual_seed(0)
    return build_backbone({**SMALL, **overrides}).eval()


def random_batches(vocab: int, n: int = 2, batch: int = 4, seq: int = 16) -> list[dict]:
    """Right-padded random token batches with a few shorter rows."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch, seq), generator=gen)
        lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=gen)
        lengths[0] = seq
        mask = (torch.arange(seq) < lengths[:, None]).long()
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@torch.no_grad()
def hidden_states(model: PreTrainedModel, batch: dict) -> Tensor:
    return model(**batch).last_hidden_state * batch["attention_mask"][..., None]


def load_shape(name: str) -> dict:
    return OmegaConf.to_container(model_config(name).shape)


# --- the published small models from a 0.6B ---------------------------------------------------


@pytest.fixture(scope="module")
def qwen3_0_6b() -> tuple[PreTrainedModel, Importance]:
    """A randomly initialised 0.6B-shaped backbone in bf16 and its importance on short batches."""
    with torch.device("meta"):
        model = build_backbone(load_shape("f2llm_0_6b")).to(torch.bfloat16)
    model = model.to_empty(device="cpu").eval()
    torch.manual_seed(0)
    with torch.no_grad():
        # uniform_ is the cheapest random fill on CPU; std 0.02 like the Qwen3 init.
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.uniform_(-0.02 * 3**0.5, 0.02 * 3**0.5)
    # to_empty leaves the non-persistent rotary buffers uninitialised.
    model.rotary_emb = type(model.rotary_emb)(config=model.config)
    batches = random_batches(model.config.vocab_size, n=1, batch=2, seq=8)
    importance = collect_importance(model, batches, progress=False)
    return model, importance


def sharing_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of the module tree and config that shares the weight tensors.

    Pruning swaps in new parameters and never writes into the old ones, so this is enough to
    prune one 0.6B three ways without copying 1.2 GB each time.
    """
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo=shared)


@pytest.mark.parametrize(
    ("name", "method"),
    [("f2llm_80m", "activation"), ("f2llm_160m", "activation"), ("f2llm_330m", "activation"),
     ("f2llm_80m", "first_k")],
)
def test_prune_0_6b_to_published_shape(
    qwen3_0_6b: tuple[PreTrainedModel, Importance], name: str, method: str
) -> None:
    base, importance = qwen3_0_6b
    before = {k: v.clone() for k, v in base.layers[0].state_dict().items()}
    shape = load_shape(name)
    model = prune_backbone(sharing_copy(base), shape, importance, method=method)

    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    for key in PRUNABLE + KEPT:
        assert getattr(model.config, key) == shape[key], key
    assert len(model.config.layer_types) == shape["num_hidden_layers"]
    with torch.device("meta"):
        reference = AutoModel.from_config(qwen3_config(**shape))
    expected = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == expected
    out = hidden_states(model, random_batches(shape["vocab_size"], n=1, batch=1, seq=4)[0])
    assert out.shape[-1] == shape["hidden_size"] and torch.isfinite(out).all()
    # The unpruned model is untouched (what sharing_copy relies on).
    assert base.config.num_hidden_layers == 28
    torch.testing.assert_close(base.layers[0].state_dict(), before)


# --- activation importance keeps what matters ----------------------------------------------


def test_activation_keeps_strong_neurons() -> None:
    model = small_backbone()
    strong = [3, 17, 40]
    with torch.no_grad():
        for layer in model.layers:
            layer.mlp.gate_proj.weight[strong] *= 4
            layer.mlp.up_proj.weight[strong] *= 4
    original = copy.deepcopy(model)
    importance = collect_importance(model, random_batches(SMALL["vocab_size"]), progress=False)
    plan = plan_pruning(model.config, {"intermediate_size": 6}, importance)
    prune_backbone(model, {"intermediate_size": 6}, importance)

    for kept, layer, old in zip(plan.neurons, model.layers, original.layers, strict=True):
        assert set(strong) <= set(kept.tolist())
        assert kept.tolist() == sorted(kept.tolist())
        torch.testing.assert_close(layer.mlp.up_proj.weight, old.mlp.up_proj.weight[kept])
        torch.testing.assert_close(layer.mlp.down_proj.weight, old.mlp.down_proj.weight[:, kept])


def test_activation_keeps_strong_heads_within_kv_groups() -> None:
    model = small_backbone()
    head_dim = SMALL["head_dim"]
    group = SMALL["num_attention_heads"] // SMALL["num_key_value_heads"]
    strong = [1, 2, 5, 7]
    with torch.no_grad():
        for layer in model.layers:
            q, k = layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight
            for h in range(SMALL["num_attention_heads"]):
                rows = slice(h * head_dim, (h + 1) * head_dim)
                if h in strong:
                    # q = k: each token attends mostly to itself, so the head's output is a
                    # whole value vector rather than an average that cancels out.
                    kv = h // group
                    q[rows] = k[kv * head_dim : (kv + 1) * head_dim]
                else:
                    q[rows] = 0  # uniform attention over the prefix
    importance = collect_importance(model, random_batches(SMALL["vocab_size"]), progress=False)
    plan = plan_pruning(model.config, {"num_attention_heads": 4}, importance)
    assert all(kept.tolist() == strong for kept in plan.heads)

    pruned = prune_backbone(copy.deepcopy(model), {"num_attention_heads": 4}, importance)
    rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in strong])
    for layer, old in zip(pruned.layers, model.layers, strict=True):
        torch.testing.assert_close(layer.self_attn.q_proj.weight, old.self_attn.q_proj.weight[rows])
        torch.testing.assert_close(
            layer.self_attn.o_proj.weight, old.self_attn.o_proj.weight[:, rows]
        )
        torch.testing.assert_close(layer.self_attn.k_proj.weight, old.self_attn.k_proj.weight)
        assert layer.self_attn.num_key_value_groups == 2


def test_heads_are_ranked_within_their_group() -> None:
    # The three best heads are all in group 0; a global top-4 would leave group 1 one head.
    scores = torch.tensor([9.0, 8.0, 7.0, 0.0, 1.0, 3.0, 2.0, 0.5])
    assert heads_to_keep(scores, num_key_value_heads=2, num_heads=4).tolist() == [0, 1, 5, 6]


def test_activation_keeps_strong_hidden_channels() -> None:
    model = small_backbone()
    strong = [4, 9, 30]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                param[strong] *= 10
    original = copy.deepcopy(model)
    importance = collect_importance(model, random_batches(SMALL["vocab_size"]), progress=False)
    kept = plan_pruning(model.config, {"hidden_size": 8}, importance).hidden
    assert set(strong) <= set(kept.tolist())

    prune_backbone(model, {"hidden_size": 8}, importance)
    torch.testing.assert_close(model.embed_tokens.weight, original.embed_tokens.weight[:, kept])
    torch.testing.assert_close(model.norm.weight, original.norm.weight[kept])
    layer, old = model.layers[0], original.layers[0]
    torch.testing.assert_close(layer.self_attn.q_proj.weight, old.self_attn.q_proj.weight[:, kept])
    torch.testing.assert_close(layer.mlp.down_proj.weight, old.mlp.down_proj.weight[kept])
    torch.testing.assert_close(layer.self_attn.q_norm.weight, old.self_attn.q_norm.weight)


def test_prefix_hidden_keeps_the_first_channels_and_ranks_the_rest() -> None:
    """hidden="prefix": the residual stream keeps channels 0..d-1 (an MRL teacher's embedding
    prefix), while neurons are still chosen by activation."""
    model = small_backbone()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                param[[20, 30]] *= 10  # activation would keep these
    importance = collect_importance(model, random_batches(SMALL["vocab_size"]), progress=False)
    target = {"hidden_size": 8, "intermediate_size": 6}
    plan = plan_pruning(model.config, target, importance, hidden="prefix")
    assert plan.hidden.tolist() == list(range(8))
    by_activation = plan_pruning(model.config, target, importance)
    assert by_activation.hidden.tolist() != plan.hidden.tolist()
    assert plan.neurons[0].tolist() == by_activation.neurons[0].tolist()
    with pytest.raises(ValueError, match="hidden channel choice"):
        plan_pruning(model.config, target, importance, hidden="first")


def test_identity_layer_and_dead_neurons_are_pruned_exactly() -> None:
    model = small_backbone()
    dead = list(range(0, SMALL["intermediate_size"], 2))
    with torch.no_grad():
        model.layers[1].self_attn.o_proj.weight.zero_()
        model.layers[1].mlp.down_proj.weight.zero_()
        for layer in model.layers:
            layer.mlp.gate_proj.weight[dead] = 0  # silu(0) * up = 0: the neuron never fires
    batches = random_batches(SMALL["vocab_size"])
    importance = collect_importance(model, batches, progress=False)
    assert importance.layers[1] < 1e-6 < importance.layers[[0, 2]].min()

    target = {"num_hidden_layers": 2, "intermediate_size": SMALL["intermediate_size"] - len(dead)}
    plan = plan_pruning(model.config, target, importance)
    assert plan.layers.tolist() == [0, 2]
    pruned = prune_backbone(copy.deepcopy(model), target, importance)
    for batch in batches:
        torch.testing.assert_close(hidden_states(pruned, batch), hidden_states(model, batch))


def test_importance_ignores_padding() -> None:
    model = small_backbone()
    batch = random_batches(SMALL["vocab_size"], n=1)[0]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    alone = [
        {"input_ids": i[m.bool()][None], "attention_mask": m[m.bool()][None]}
        for i, m in zip(ids, mask, strict=True)
    ]
    # Left padding: the same texts moved to the end of each row.
    shift = mask.shape[1] - mask.sum(1)
    left = {
        key: torch.stack([row.roll(int(s)) for row, s in zip(batch[key], shift, strict=True)])
        for key in ("input_ids", "attention_mask")
    }
    assert left["attention_mask"][1, 0] == 0 and left["attention_mask"][1, -1] == 1
    reference = collect_importance(model, alone, progress=False)
    for batches in ([batch], [left]):
        got = collect_importance(model, batches, progress=False)
        for field in ("neurons", "heads", "hidden", "layers"):
            torch.testing.assert_close(getattr(got, field), getattr(reference, field))


def test_encoder_importance_uses_embedding_inputs() -> None:
    torch.manual_seed(0)
    shape = {**SMALL, "vocab_size": 151_936}
    enc = build_encoder("tiny", shape=shape, max_length=32)
    texts = ["Datei nicht gefunden", "file not found", "Fichier introuvable, réessayez"]
    task = "Retrieve parallel sentences"
    got = encoder_importance(enc, texts, batch_size=2, instruction=task, progress=False)
    per_text = [enc.tokenize([enc.format_query(t, task)]) for t in texts]
    # The tokenizer appends EOS: it is part of every calibration text, as in training.
    eos = enc.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert all(b["input_ids"][0, -1] == eos for b in per_text)
    expected = collect_importance(enc.backbone, per_text, progress=False)
    for field in ("neurons", "heads", "hidden", "layers"):
        torch.testing.assert_close(getattr(got, field), getattr(expected, field))


# --- slicing mechanics -------------------------------------------------------------------------


def test_first_k_keeps_the_leading_parts() -> None:
    model = small_backbone()
    target = {"num_hidden_layers": 2, "hidden_size": 20, "intermediate_size": 10,
              "num_attention_heads": 4}
    pruned = prune_backbone(copy.deepcopy(model), target, method="first_k")
    head_dim = SMALL["head_dim"]
    heads = [0, 1, 4, 5]  # the first two of each KV group of four
    rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])
    torch.testing.assert_close(pruned.embed_tokens.weight, model.embed_tokens.weight[:, :20])
    for layer, old in zip(pruned.layers, model.layers[:2], strict=True):
        torch.testing.assert_close(layer.mlp.gate_proj.weight, old.mlp.gate_proj.weight[:10, :20])
        torch.testing.assert_close(
            layer.self_attn.q_proj.weight, old.self_attn.q_proj.weight[rows, :20]
        )
        torch.testing.assert_close(
            layer.self_attn.o_proj.weight, old.self_attn.o_proj.weight[:20][:, rows]
        )


@pytest.mark.parametrize("method", ["activation", "first_k"])
def test_pruning_to_the_same_shape_is_a_no_op(method: str) -> None:
    model = small_backbone()
    batches = random_batches(SMALL["vocab_size"])
    importance = collect_importance(model, batches, progress=False)
    pruned = prune_backbone(copy.deepcopy(model), dict(SMALL), importance, method=method)
    for batch in batches:
        torch.testing.assert_close(hidden_states(pruned, batch), hidden_states(model, batch))
    assert pruned.config.to_dict() == model.config.to_dict()


def test_pruned_model_reloads_with_identical_outputs(tmp_path: Path) -> None:
    # Sliding-window layers from index 2 on: dropping layers must keep each layer's type.
    model = small_backbone(
        num_hidden_layers=4, use_sliding_window=True, sliding_window=4, max_window_layers=2
    )
    batches = random_batches(SMALL["vocab_size"])
    importance = collect_importance(model, batches, progress=False)
    importance.layers = torch.tensor([1.0, 0.0, 1.0, 1.0])  # drop a full-attention layer
    target = {"num_hidden_layers": 3, "hidden_size": 24, "intermediate_size": 20,
              "num_attention_heads": 4}
    prune_backbone(model, target, importance)
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert model.config.max_window_layers == 1

    model.save_pretrained(tmp_path / "pruned")
    reloaded = AutoModel.from_pretrained(tmp_path / "pruned").eval()
    assert type(reloaded) is type(model)
    assert reloaded.config.layer_types == model.config.layer_types
    for batch in batches:
        torch.testing.assert_close(
            hidden_states(reloaded, batch), hidden_states(model, batch), atol=1e-5, rtol=1e-5
        )


def test_prune_in_steps() -> None:
    model = small_backbone()
    target = {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 12,
              "num_attention_heads": 2}
    steps = step_targets(model.config, target, 3)
    assert len(steps) == 3 and steps[-1] == target
    assert all(s["num_attention_heads"] % SMALL["num_key_value_heads"] == 0 for s in steps)

    batches = random_batches(SMALL["vocab_size"])
    stepped = prune_in_steps(copy.deepcopy(model), steps, batches, progress=False)
    assert {k: getattr(stepped.config, k) for k in target} == target
    # first_k of first_k is first_k: stepping and one shot agree exactly.
    stepped = prune_in_steps(copy.deepcopy(model), steps, method="first_k")
    one_shot = prune_backbone(copy.deepcopy(model), target, method="first_k")
    torch.testing.assert_close(stepped.state_dict(), one_shot.state_dict())


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ({"head_dim": 8}, "keeps head_dim"),
        ({"num_attention_heads": 3}, "multiple of num_key_value_heads"),
        ({"hidden_size": 64}, "hidden_size=64"),
        ({"intermediate_size": 0}, "intermediate_size=0"),
    ],
)
def test_invalid_targets_are_errors(target: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        prune_backbone(small_backbone(), target, method="first_k")


def test_activation_needs_matching_importance() -> None:
    model = small_backbone()
    with pytest.raises(ValueError, match="needs `importance`"):
        prune_backbone(model, {"hidden_size": 16})
    other = collect_importance(small_backbone(num_hidden_layers=2),
                               random_batches(SMALL["vocab_size"], n=1), progress=False)
    with pytest.raises(ValueError, match="measured on the model being pruned"):
        prune_backbone(model, {"hidden_size": 16}, other)
    with pytest.raises(ValueError, match="unknown pruning method"):
        prune_backbone(model, {"hidden_size": 16}, method="magnitude")
