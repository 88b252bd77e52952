"""Activation-based importance of neurons, heads, hidden channels and layers (Minitron style).

Every score of a neuron, head or channel is the mean |activation| over the real tokens of a text,
then the L2 norm of that over all calibration texts. Layers score 1 - cos(input, output),
averaged over real tokens: a layer that barely turns its input is cheap to drop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from f2llm.model import Encoder
from f2llm.model.encoder import inference_autocast


@dataclass
class Importance:
    """Scores of one backbone; indices refer to its current (unpruned) shape."""

    neurons: Tensor  # (num_hidden_layers, intermediate_size): MLP neurons
    heads: Tensor  # (num_hidden_layers, num_attention_heads): query heads
    hidden: Tensor  # (hidden_size,): residual-stream channels
    layers: Tensor  # (num_hidden_layers,): 1 - cos(layer input, layer output)


class _Recorder:
    """Forward hooks that accumulate activation statistics over calibration batches."""

    def __init__(self, backbone: PreTrainedModel) -> None:
        cfg = backbone.config
        n_layers, n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        zeros = {"device": backbone.device, "dtype": torch.float32}
        # Sums of squares over texts of the per-text mean |activation| (sqrt at the end).
        self.neurons = torch.zeros(n_layers, cfg.intermediate_size, **zeros)
        self.heads = torch.zeros(n_layers, n_heads, **zeros)
        # One row per RMSNorm: input_layernorm and post_attention_layernorm of every layer, then
        # the final norm.
        self.norms = torch.zeros(2 * n_layers + 1, cfg.hidden_size, **zeros)
        self.layer_distance = torch.zeros(n_layers, **zeros)
        self.tokens = torch.zeros((), **zeros)
        self.mask: Tensor | None = None  # (batch, seq, 1) bool, set before each forward
        self.handles: list[Any] = []

        hooks = self.handles
        for i, layer in enumerate(backbone.layers):
            hooks.append(layer.mlp.down_proj.register_forward_pre_hook(self._neuron_hook(i)))
            hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(self._head_hook(i)))
            for j, norm in enumerate((layer.input_layernorm, layer.post_attention_layernorm)):
                hooks.append(norm.register_forward_hook(self._norm_hook(2 * i + j)))
            hooks.append(layer.register_forward_hook(self._layer_hook(i), with_kwargs=True))
        hooks.append(backbone.norm.register_forward_hook(self._norm_hook(2 * n_layers)))

    def _accumulate(self, store: Tensor, row: int, act: Tensor) -> None:
        """Add the squared per-text mean |act| over real tokens; act is (batch, seq, channels)."""
        mask = self.mask
        # where, not a product: a padded position may hold NaN (a fully masked attention row).
        per_text = act.float().abs().where(mask, 0).sum(1) / mask.sum(1).clamp(min=1)
        store[row] += per_text.pow(2).sum(0)

    def _neuron_hook(self, index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            self._accumulate(self.neurons, index, args[0])

        return hook

    def _head_hook(self, index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            # The input of o_proj is the heads' outputs side by side; a head's activation per
            # token is the L2 norm of its head_dim slice.
            per_head = args[0].unflatten(-1, (-1, self.head_dim)).float().norm(dim=-1)
            self._accumulate(self.heads, index, per_head)

        return hook

    def _norm_hook(self, row: int) -> Any:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            self._accumulate(self.norms, row, output)

        return hook

    def _layer_hook(self, index: int) -> Any:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> None:
            inp = args[0] if args else kwargs["hidden_states"]
            # Older transformers return a tuple from a decoder layer.
            out = output[0] if isinstance(output, tuple) else output
            cos = nn.functional.cosine_similarity(inp.float(), out.float(), dim=-1)
            self.layer_distance[index] += (1 - cos).where(self.mask[..., 0], 0).sum()

        return hook

    def result(self) -> Importance:
        tokens = self.tokens.clamp(min=1)
        return Importance(
            neurons=self.neurons.sqrt().cpu(),
            heads=self.heads.sqrt().cpu(),
            # L2 over texts per norm, summed over the norms: every norm reads the same residual
            # stream, so a channel matters if it is large anywhere along the depth.
            hidden=self.norms.sqrt().sum(0).cpu(),
            layers=(self.layer_distance / tokens).cpu(),
        )

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def collect_importance(
    backbone: PreTrainedModel,
    batches: Iterable[Mapping[str, Tensor]],
    progress: bool = True,
) -> Importance:
    """Importance of `backbone`'s parts from calibration batches (input_ids, attention_mask)."""
    if not hasattr(backbone, "layers"):
        raise TypeError(f"expected a Qwen3Model-like backbone, got {type(backbone).__name__}")
    recorder = _Recorder(backbone)
    was_training = backbone.training
    backbone.eval()
    device = backbone.device
    total = len(batches) if isinstance(batches, Sequence) else None
    try:
        for batch in tqdm(batches, total=total, desc="pruning calibration", disable=not progress):
            ids = batch["input_ids"].to(device)
            mask = batch["attention_mask"].to(device)
            recorder.mask = mask[..., None].bool()
            recorder.tokens += mask.sum()
            # Positions count real tokens only, as in Encoder.forward, so left padding sees the
            # same activations as right padding.
            position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
            with inference_autocast(backbone):
                backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids)
    finally:
        recorder.remove()
        backbone.train(was_training)
    return recorder.result()


def encoder_importance(
    encoder: Encoder,
    texts: Sequence[str],
    batch_size: int = 32,
    instruction: str | None = None,
    progress: bool = True,
) -> Importance:
    """Importance of `encoder.backbone` from calibration texts, tokenized as for embedding."""
    texts = [encoder.format_query(t, instruction) for t in texts]
    return collect_importance(encoder.backbone, calibration_batches(encoder, texts, batch_size),
                              progress=progress)


def calibration_batches(encoder: Encoder, texts: Sequence[str], batch_size: int = 32
                        ) -> list[dict[str, Tensor]]:
    """`texts` tokenized as for embedding, in length-sorted batches: less compute on padding,
    and the importance scores do not depend on the grouping."""
    ordered = sorted(texts, key=len)
    return [encoder.tokenize(ordered[start : start + batch_size])
            for start in range(0, len(ordered), batch_size)]
