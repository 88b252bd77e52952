"""Structured pruning of a Qwen3 backbone: depth, hidden size, MLP width and query heads.

head_dim, num_key_value_heads and the vocabulary are kept. Every kept index list is sorted
ascending, so the surviving parts keep their original order. Modules and config are updated
together, so `save_pretrained` + `AutoModel.from_pretrained` rebuilds the same model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, Unpack

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from f2llm.pruning.importance import Importance, collect_importance

PRUNABLE = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")
KEPT = ("head_dim", "num_key_value_heads", "vocab_size")

Method = Literal["activation", "first_k"]
# How hidden channels are chosen: by the method, or the first ones (see plan_pruning).
Hidden = Literal["method", "prefix"]


class Choice(TypedDict, total=False):
    """How `plan_pruning` chooses (its keyword arguments), passed on by `prune_backbone`."""

    method: Method
    hidden: Hidden


@dataclass
class PruningPlan:
    """What survives, as indices into the unpruned backbone."""

    layers: Tensor  # kept decoder layers
    hidden: Tensor  # kept hidden channels
    neurons: list[Tensor]  # kept MLP neurons, one entry per kept layer
    heads: list[Tensor]  # kept query heads, one entry per kept layer


def top_k(scores: Tensor, k: int) -> Tensor:
    """Indices of the `k` largest scores, in ascending index order."""
    return torch.topk(scores.float(), k).indices.sort().values


def heads_to_keep(scores: Tensor, num_key_value_heads: int, num_heads: int) -> Tensor:
    """The `num_heads` query heads to keep, the same number from every KV group.

    Query head h reads KV head h // group_size, so groups are contiguous runs of heads; ranking
    within a group keeps every KV head used and the grouping valid after slicing.
    """
    group_size = scores.numel() // num_key_value_heads
    per_group = num_heads // num_key_value_heads
    groups = scores.view(num_key_value_heads, group_size)
    return torch.cat([top_k(g, per_group) + i * group_size for i, g in enumerate(groups)])


def _target_shape(config: PretrainedConfig, target: Mapping[str, Any]) -> dict[str, int]:
    for key in KEPT:
        if key in target and int(target[key]) != getattr(config, key):
            raise ValueError(
                f"pruning keeps {key}: target has {target[key]}, model has {getattr(config, key)}"
            )
    shape = {key: int(target.get(key, getattr(config, key))) for key in PRUNABLE}
    for key, value in shape.items():
        if not 0 < value <= getattr(config, key):
            raise ValueError(f"{key}={value} must be in [1, {getattr(config, key)}]")
    if shape["num_attention_heads"] % config.num_key_value_heads:
        raise ValueError(
            f"num_attention_heads={shape['num_attention_heads']} must be a multiple of "
            f"num_key_value_heads={config.num_key_value_heads}"
        )
    return shape


def _first_k_scores(config: PretrainedConfig) -> Importance:
    """Strictly decreasing scores, so that top-k picks the first k."""

    def falling(n: int) -> Tensor:
        return -torch.arange(n, dtype=torch.float32)

    n_layers = config.num_hidden_layers
    return Importance(
        neurons=falling(config.intermediate_size).expand(n_layers, -1),
        heads=falling(config.num_attention_heads).expand(n_layers, -1),
        hidden=falling(config.hidden_size),
        layers=falling(n_layers),
    )


def _check_importance(config: PretrainedConfig, importance: Importance) -> None:
    n_layers = config.num_hidden_layers
    expected = {
        "neurons": (n_layers, config.intermediate_size),
        "heads": (n_layers, config.num_attention_heads),
        "hidden": (config.hidden_size,),
        "layers": (n_layers,),
    }
    for name, shape in expected.items():
        if tuple(getattr(importance, name).shape) != shape:
            raise ValueError(
                f"importance.{name} has shape {tuple(getattr(importance, name).shape)}, the "
                f"backbone needs {shape}: importance must be measured on the model being pruned"
            )


def plan_pruning(
    config: PretrainedConfig,
    target: Mapping[str, Any],
    importance: Importance | None = None,
    method: Method = "activation",
    hidden: Hidden = "method",
) -> PruningPlan:
    """Choose what to keep to reach `target` (missing keys: unchanged).

    `target` may be a whole model `shape`: entries other than the pruned and kept dimensions
    (rope, eps, positions) are not shape and are ignored. `hidden="prefix"` keeps the first
    hidden channels whatever the method: the embedding is the residual stream's last state,
    and an MRL-trained model's first d channels are its d-dim embedding, which is what KD
    compares the student with (the teacher cut to the student's width).
    """
    if hidden not in ("method", "prefix"):
        raise ValueError(f"unknown hidden channel choice {hidden!r}: 'method' or 'prefix'")
    shape = _target_shape(config, target)
    if method == "first_k":
        importance = _first_k_scores(config)
    elif method == "activation":
        if importance is None:
            raise ValueError("method='activation' needs `importance` (see collect_importance)")
        _check_importance(config, importance)
    else:
        raise ValueError(f"unknown pruning method {method!r}: 'activation' or 'first_k'")

    layers = top_k(importance.layers, shape["num_hidden_layers"])
    return PruningPlan(
        layers=layers,
        hidden=(torch.arange(shape["hidden_size"]) if hidden == "prefix"
                else top_k(importance.hidden, shape["hidden_size"])),
        neurons=[top_k(importance.neurons[i], shape["intermediate_size"]) for i in layers],
        heads=[
            heads_to_keep(
                importance.heads[i], config.num_key_value_heads, shape["num_attention_heads"]
            )
            for i in layers
        ],
    )


@torch.no_grad()
def _slice_param(param: nn.Parameter, dim: int, keep: Tensor) -> nn.Parameter:
    sliced = param.index_select(dim, keep.to(param.device))
    return nn.Parameter(sliced, requires_grad=param.requires_grad)


def _slice_linear(linear: nn.Linear, out_keep: Tensor | None = None,
                  in_keep: Tensor | None = None) -> None:
    if out_keep is not None:
        linear.weight = _slice_param(linear.weight, 0, out_keep)
        if linear.bias is not None:
            linear.bias = _slice_param(linear.bias, 0, out_keep)
        linear.out_features = out_keep.numel()
    if in_keep is not None:
        linear.weight = _slice_param(linear.weight, 1, in_keep)
        linear.in_features = in_keep.numel()


def prune_layers(backbone: PreTrainedModel, keep: Sequence[int] | Tensor) -> PreTrainedModel:
    """Keep the decoder layers `keep` (ascending), re-indexed and with their layer types."""
    keep = [int(i) for i in keep]
    config = backbone.config
    backbone.layers = nn.ModuleList([backbone.layers[i] for i in keep])
    for new_index, layer in enumerate(backbone.layers):
        # The KV cache is addressed by layer_idx.
        layer.self_attn.layer_idx = new_index
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
        backbone.has_sliding_layers = "sliding_attention" in config.layer_types
    boundary = getattr(config, "max_window_layers", None)
    if boundary is not None and boundary <= config.num_hidden_layers:
        # Layers from max_window_layers on may use sliding attention; move the boundary to
        # the same place among the kept layers. A boundary past the last layer stays valid.
        config.max_window_layers = sum(i < boundary for i in keep)
    config.num_hidden_layers = len(keep)
    return backbone


def prune_neurons(backbone: PreTrainedModel, keep: Sequence[Tensor]) -> PreTrainedModel:
    """Keep MLP neurons `keep[i]` in layer i (the same number in every layer)."""
    sizes = {k.numel() for k in keep}
    if len(keep) != len(backbone.layers) or len(sizes) != 1:
        raise ValueError("need one index tensor per layer, all of the same length")
    for layer, idx in zip(backbone.layers, keep, strict=True):
        mlp = layer.mlp
        _slice_linear(mlp.gate_proj, out_keep=idx)
        _slice_linear(mlp.up_proj, out_keep=idx)
        _slice_linear(mlp.down_proj, in_keep=idx)
        mlp.intermediate_size = idx.numel()
    backbone.config.intermediate_size = sizes.pop()
    return backbone


def prune_heads(backbone: PreTrainedModel, keep: Sequence[Tensor]) -> PreTrainedModel:
    """Keep query heads `keep[i]` in layer i (see `heads_to_keep` for a valid choice)."""
    config = backbone.config
    sizes = {k.numel() for k in keep}
    if len(keep) != len(backbone.layers) or len(sizes) != 1:
        raise ValueError("need one index tensor per layer, all of the same length")
    num_heads = sizes.pop()
    if num_heads % config.num_key_value_heads:
        raise ValueError("the kept heads must fill every KV group equally")
    head_dim = config.head_dim
    for layer, heads in zip(backbone.layers, keep, strict=True):
        attn = layer.self_attn
        rows = (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()
        _slice_linear(attn.q_proj, out_keep=rows)
        _slice_linear(attn.o_proj, in_keep=rows)
        attn.num_key_value_groups = num_heads // config.num_key_value_heads
    config.num_attention_heads = num_heads
    return backbone


def prune_hidden(backbone: PreTrainedModel, keep: Tensor) -> PreTrainedModel:
    """Keep hidden channels `keep` everywhere the residual stream is read or written."""
    embed = backbone.embed_tokens
    embed.weight = _slice_param(embed.weight, 1, keep)
    embed.embedding_dim = keep.numel()
    norm = backbone.norm
    norm.weight = _slice_param(norm.weight, 0, keep)
    for layer in backbone.layers:
        for ln in (layer.input_layernorm, layer.post_attention_layernorm):
            ln.weight = _slice_param(ln.weight, 0, keep)
        attn, mlp = layer.self_attn, layer.mlp
        for reader in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            _slice_linear(reader, in_keep=keep)
        for writer in (attn.o_proj, mlp.down_proj):
            _slice_linear(writer, out_keep=keep)
        layer.hidden_size = mlp.hidden_size = keep.numel()
    backbone.config.hidden_size = keep.numel()
    return backbone


def apply_plan(backbone: PreTrainedModel, plan: PruningPlan) -> PreTrainedModel:
    """Slice `backbone` in place to what `plan` keeps."""
    prune_layers(backbone, plan.layers)
    prune_neurons(backbone, plan.neurons)
    prune_heads(backbone, plan.heads)
    prune_hidden(backbone, plan.hidden)
    return backbone


def prune_backbone(backbone: PreTrainedModel, target: Mapping[str, Any],
                   importance: Importance | None = None, **choice: Unpack[Choice]
                   ) -> PreTrainedModel:
    """Prune `backbone` in place to `target`: `plan_pruning` on its config, then `apply_plan`.

    `importance` (from `collect_importance` on this backbone) is needed for 'activation' and
    unused by 'first_k'; `choice` (method, hidden) is `plan_pruning`'s.
    """
    if not hasattr(backbone, "layers"):
        raise TypeError(f"expected a Qwen3Model-like backbone, got {type(backbone).__name__}")
    return apply_plan(backbone, plan_pruning(backbone.config, target, importance, **choice))


def step_targets(
    config: PretrainedConfig, target: Mapping[str, Any], steps: int
) -> list[dict[str, int]]:
    """`steps` shapes going linearly from `config`'s shape to `target` (the last is `target`).

    Head counts are rounded to whole heads per KV group.
    """
    final = _target_shape(config, target)
    kv = config.num_key_value_heads
    out = []
    for step in range(1, steps + 1):
        frac = step / steps
        shape = {
            key: round(getattr(config, key) + frac * (final[key] - getattr(config, key)))
            for key in PRUNABLE
        }
        shape["num_attention_heads"] = max(1, round(shape["num_attention_heads"] / kv)) * kv
        out.append(shape)
    out[-1] = final
    return out


def prune_in_steps(
    backbone: PreTrainedModel,
    targets: Sequence[Mapping[str, Any]],
    batches: Sequence[Mapping[str, Tensor]] | None = None,
    method: Method = "activation",
    progress: bool = True,
    hidden: Hidden = "method",
) -> PreTrainedModel:
    """Prune through `targets` in order, re-measuring importance on `batches` before each step."""
    if method == "activation" and batches is None:
        raise ValueError("method='activation' needs calibration `batches`")
    for target in targets:
        importance = None
        if method == "activation":
            importance = collect_importance(backbone, batches, progress=progress)
        prune_backbone(backbone, target, importance, method=method, hidden=hidden)
    return backbone
