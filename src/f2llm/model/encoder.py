"""The embedding model: a Qwen3 decoder, EOS-terminated inputs, last-token pooling.

Two options go beyond the recipe: bidirectional attention (`attention: bidirectional`, as
LLM2Vec arXiv:2404.05961, GritLM arXiv:2402.09906, NV-Embed arXiv:2405.17428 and
KaLM-Embedding-V2 arXiv:2506.20923 use on decoder backbones; like KaLM-Embedding-V2 we only
remove the causal mask, with no adaptation step) and masked mean pooling (`pooling: mean`,
KaLM-Embedding-V2's pairing). The defaults are the recipe's: causal, last token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    AutoModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3Model,
)

from f2llm.model.hub import resolve_pretrained
from f2llm.model.packing import split_to_count
from f2llm.model.tokenizer import DEFAULT_EOS, load_tokenizer
from f2llm.model.weights import PendingWeights, empty_backbone, local_folder

QUERY_TEMPLATE = "Instruct: {task}\nQuery: {text}"
ATTENTIONS = ("causal", "bidirectional")
# Our pooling names -> the sentence-transformers Pooling mode that computes the same thing.
POOLING_MODES = {"last": "pooling_mode_lasttoken", "mean": "pooling_mode_mean_tokens"}


def set_attention(config: Any, attention: str) -> None:
    """Make a backbone's attention causal or bidirectional through its config.

    transformers' Qwen3 honours `config.is_causal = False` with no custom code (tested with
    5.24): `create_causal_mask` then returns the bidirectional padding mask (masking_utils) and
    `merge_with_config_defaults` passes `is_causal=False` down to the sdpa / flash-attention
    kernels. The flag is saved in config.json, so an exported folder loads bidirectional under
    plain `AutoModel` and `SentenceTransformer` as well.
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"model.attention must be one of {ATTENTIONS}, got {attention!r}")
    config.is_causal = attention == "causal"


def attention_of(config: Any) -> str:
    """'causal' or 'bidirectional', as a backbone config says (absent flag: causal)."""
    return "causal" if getattr(config, "is_causal", True) else "bidirectional"


def folder_pooling(folder: str | Path) -> str | None:
    """The pooling a sentence-transformers folder declares ('last' or 'mean'); None if it has
    no Pooling module. Any other mode (cls, max, ...) is refused: our encoder cannot embed so."""
    folder = Path(folder)
    modules = folder / "modules.json"
    if not modules.exists():
        return None
    for module in json.loads(modules.read_text()):
        if module.get("type", "").endswith("models.Pooling"):
            config = json.loads((folder / module["path"] / "config.json").read_text())
            modes = sorted(k for k, v in config.items() if k.startswith("pooling_mode_") and v)
            ours = [name for name, mode in POOLING_MODES.items() if [mode] == modes]
            if not ours:
                raise ValueError(f"{folder}: pooling {modes} is not one of f2llm's "
                                 f"({', '.join(POOLING_MODES)})")
            return ours[0]
    return None


def qwen3_config(**shape: Any) -> Qwen3Config:
    """A Qwen3 config for an embedding backbone (tied embeddings, no LM head needed)."""
    shape.setdefault("tie_word_embeddings", True)
    return Qwen3Config(**shape)


def weights_dtype(precision: str | None) -> torch.dtype:
    """The dtype weights that are never trained (a frozen teacher's) take under a trainer
    `precision`: bf16 for "bf16-*", fp16 for "16-*", else float32."""
    text = str(precision or "")
    if text.startswith("bf16"):
        return torch.bfloat16
    if text.startswith("16"):
        return torch.float16
    return torch.float32


def build_backbone(
    shape: Mapping[str, Any] | None = None,
    pretrained: str | Path | None = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    attention: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """Random init from `shape`, or `from_pretrained` of a hub name or local folder.

    `attention` ('causal' | 'bidirectional') sets the backbone's attention; None keeps what
    the folder's config.json says (causal for a random init and for any Qwen3 checkpoint).
    """
    model = _backbone(shape, pretrained, attn_implementation, trust_remote_code, dtype)
    if attention is not None:
        set_attention(model.config, attention)
    return model


def _backbone(
    shape: Mapping[str, Any] | None,
    pretrained: str | Path | None,
    attn_implementation: str,
    trust_remote_code: bool,
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    if pretrained:
        # AutoModel strips a causal-LM checkpoint down to its decoder (Qwen3Model).
        model = AutoModel.from_pretrained(
            resolve_pretrained(pretrained),
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            dtype=dtype,
        )
        # `from_pretrained` returns the model in eval mode, and Lightning keeps the modes it
        # finds: trained so, gradient checkpointing (active only in train mode) and any dropout
        # would be silently off. A built backbone is for training, as a random init is.
        return model.train()
    if shape is None:
        raise ValueError("model needs either `pretrained` (hub name or folder) or `shape`")
    config = qwen3_config(**dict(shape))
    config._attn_implementation = attn_implementation
    return Qwen3Model(config).to(dtype)


def default_attention(precision: str | None = None) -> str:
    """flash_attention_2 where it can run (the package, a CUDA device, and a training
    precision other than 32-bit: flash-attention takes bf16/fp16 only), else sdpa."""
    import importlib.util

    if precision is not None and not str(precision).startswith(("bf16", "16")):
        return "sdpa"
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


# Attention kernels that take half precision only: transformers casts a float32 query to the
# autocast dtype, else to the Linear weights' dtype (integrations/flash_attention.py,
# `get_target_dtype`), and flash-attention refuses float32.
HALF_ONLY_ATTENTION = frozenset({"flash_attention_2", "flash_attention_3"})


def inference_autocast(backbone: nn.Module) -> AbstractContextManager[Any]:
    """bf16 autocast for a forward outside the training step (evaluation, encode, pruning
    calibration, export checks) when the backbone's attention kernel refuses float32 and
    neither its weights nor an active autocast are half precision; otherwise nothing.

    The training step runs under the trainer's precision (autocast for `bf16-mixed`); a
    forward outside it would hand flash-attention float32 queries and fail.
    """
    config = getattr(backbone, "config", None)
    if getattr(config, "_attn_implementation", None) not in HALF_ONLY_ATTENTION:
        return nullcontext()
    param = next(backbone.parameters())
    device = param.device.type
    if param.dtype != torch.float32 or torch.is_autocast_enabled(device):
        return nullcontext()
    return torch.autocast(device, dtype=torch.bfloat16)


def last_token_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Hidden state of the last real token, whatever side the padding is on."""
    seq_len = attention_mask.shape[1]
    # Position of the last 1 in each row: flip, find the first 1, map back.
    last = seq_len - 1 - attention_mask.flip(-1).int().argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of the real tokens' hidden states (EOS included, padding excluded), as
    sentence-transformers' `pooling_mode_mean_tokens` computes it."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


POOLERS = {"last": last_token_pool, "mean": mean_pool}


class Encoder(nn.Module):
    """Texts -> raw (unnormalised) embeddings of size `hidden_size`."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 512,
        query_template: str = QUERY_TEMPLATE,
        pooling: str = "last",
    ) -> None:
        super().__init__()
        if pooling not in POOLERS:
            raise ValueError(f"model.pooling must be one of {tuple(POOLERS)}, got {pooling!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.query_template = query_template
        self.pooling = pooling
        # Set by `f2llm.parallel.shard_encoder`: ranks then agree on chunk counts.
        self.match_chunks_across_ranks = False
        # A meta-device backbone's weights, filled once sharded (`build_encoder(empty_init)`).
        self.pending_weights: PendingWeights | None = None

    def _apply(self, fn: Any, recurse: bool = True) -> Encoder:
        """`nn.Module._apply` (behind `.to`, `.half`, `.bfloat16`, Lightning's precision
        conversion), with every floating-point buffer kept at its own dtype.

        Casting the model to bf16 would round Qwen3's rotary frequencies `inv_freq` (8
        significant bits: an angle error that grows with the position) and a trimmed
        vocabulary's float64 decay product; the rotary embedding computes in float32 from the
        buffer, so rounding it is silent quality loss. Buffers still move to the new device.
        """
        before = {name: b for name, b in self.named_buffers() if b.is_floating_point()}
        super()._apply(fn, recurse)
        for name, after in list(self.named_buffers()):
            old = before.get(name)
            if old is not None and after.dtype != old.dtype:
                owner, _, leaf = name.rpartition(".")
                module = self.get_submodule(owner) if owner else self
                module._buffers[leaf] = old.to(device=after.device)
        return self

    @property
    def attention(self) -> str:
        """'causal' or 'bidirectional' (the backbone config's `is_causal`)."""
        return attention_of(self.backbone.config)

    @property
    def hidden_size(self) -> int:
        return self.backbone.config.hidden_size

    def format_query(self, text: str, instruction: str | None) -> str:
        if not instruction:
            return text
        return self.query_template.format(task=instruction, text=text)

    def query_prompt(self, instruction: str) -> str:
        """The prefix that `format_query` puts before a text (the exported query prompt)."""
        marker = "\x00"
        return self.query_template.format(task=instruction, text=marker).split(marker)[0]

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        layers: Sequence[int] | None = None,
    ) -> Tensor:
        """Pooled embeddings [B, D]; with `layers`, [B, 1 + len(layers), D]: the final layer's,
        then each listed layer's (`layer_embeddings`)."""
        # Positions count real tokens only, so left padding gives the same embedding as right.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.backbone(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=bool(layers),
        )
        pooled = POOLERS[self.pooling](out.last_hidden_state, attention_mask)
        if not layers:
            return pooled
        return torch.stack([pooled, *self.layer_embeddings(out.hidden_states, attention_mask,
                                                           layers)], dim=1)

    def layer_embeddings(self, hidden_states: Sequence[Tensor], attention_mask: Tensor,
                         layers: Sequence[int]) -> list[Tensor]:
        """The pooled output (the model's own pooling) of each 1-based decoder layer in `layers`
        (below the last), after the final norm: the embedding a model cut to its first `layer`
        layers would give.

        sentence-transformers' AdaptiveLayerLoss pools `hidden_states[layer]` without the final
        norm (adaptive_layer.py, `TransformerDecorator.call_use_cache`); we norm it because
        layer pruning keeps the norm, and elastic depth is for pruned models.
        """
        depth = self.backbone.config.num_hidden_layers
        bad = [x for x in layers if not 1 <= x < depth]
        if bad:
            raise ValueError(f"objective.layers {list(layers)}: {bad} are not decoder layers "
                             f"below the last (1..{depth - 1})")
        # transformers 5 returns each layer's raw output here, except the last entry, which
        # is the normed last_hidden_state: index `layer` is layer `layer`'s output (0: embeddings).
        norm = self.backbone.norm
        pool = POOLERS[self.pooling]
        return [pool(norm(hidden_states[x]), attention_mask) for x in layers]

    def matched_chunks(self, chunks: Sequence[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        """`chunks`, cut so that every rank holds as many as the rank with the most
        (`packing.split_to_count`), when the encoder is sharded across ranks; else as they are.

        Each rank packs its own texts, so a rank with longer texts has more chunks; a sharded
        model all-gathers each layer's weights per forward call and reduce-scatters per
        backward, so ranks that made different numbers of calls would wait on each other's
        collectives (a hang) or exchange the wrong tensors. One small all-reduce per call
        agrees on the count.
        """
        chunks = list(chunks)
        if not self.match_chunks_across_ranks:
            return chunks
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_world_size() == 1:
            return chunks
        count = torch.tensor([len(chunks)], device=chunks[0]["input_ids"].device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return split_to_count(chunks, int(count), self.tokenizer.pad_token_id)

    def forward_chunks(self, chunks: Sequence[dict[str, Tensor]], restore: Tensor,
                       layers: Sequence[int] | None = None, match: bool = True) -> Tensor:
        """Embeddings of length-sorted chunks, returned in the batch's original text order.

        `match=False`: the chunks are `matched_chunks` already (GradCache matches once for
        its two passes). Rows past the batch's (a matched rank's one-token chunks) are computed
        and dropped; their zero gradient keeps the backward's collectives matched too.

        The token embeddings of all chunks are looked up in one call: each lookup's backward
        materialises a dense vocabulary-sized gradient, which for a small model costs more
        than the transformer layers.
        """
        if match:
            chunks = self.matched_chunks(chunks)
        ids = [chunk["input_ids"] for chunk in chunks]
        table = self.backbone.get_input_embeddings()
        flat = table(torch.cat([i.reshape(-1) for i in ids]))
        # `split`, not slicing: a slice's backward fills a zero tensor the size of `flat` per
        # chunk; split's backward is one concatenation.
        pieces = flat.split([i.numel() for i in ids])
        out = [self(inputs_embeds=piece.view(*chunk_ids.shape, -1),
                    attention_mask=chunk["attention_mask"], layers=layers)
               for chunk, chunk_ids, piece in zip(chunks, ids, pieces, strict=True)]
        return torch.cat(out)[restore]

    @torch.no_grad()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 256,
        instruction: str | None = None,
        normalize: bool = True,
    ) -> Tensor:
        """Embeddings of `texts` on the CPU in float32, in input order."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        texts = [self.format_query(t, instruction) for t in texts]
        # Length-sorted batches waste less compute on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.hidden_size)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenize([texts[i] for i in idx])
            with inference_autocast(self.backbone):
                emb = self(**{k: v.to(device) for k, v in batch.items()}).float().cpu()
            out[idx] = emb
        self.train(was_training)
        return nn.functional.normalize(out, dim=-1) if normalize else out


def build_encoder(
    name: str,
    shape: Mapping[str, Any] | None = None,
    pretrained: str | Path | None = None,
    tokenizer: str | Path | None = None,
    max_length: int = 512,
    eos_token: str = DEFAULT_EOS,
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
    lora: Mapping[str, Any] | None = None,
    compile: bool = False,
    attention: str | None = None,
    pooling: str | None = None,
    precision: str | None = None,
    empty_init: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Encoder:
    """Build the encoder a `configs/model/*.yaml` describes.

    `dtype`: the weights' dtype (float32 to train; a frozen teacher's may be half).
    `empty_init`: build the backbone on the meta device (no memory) and leave its weights
    pending (`Encoder.pending_weights`) until a sharded strategy fills each rank's rows
    (`f2llm.model.weights`). Not with `lora` (the adapters would need their own init).

    `attn_implementation: auto` picks flash-attention 2 when the `flash_attn` package and a
    GPU are there and `precision` (the trainer's) is not 32-bit, else sdpa. `lora` (peft
    `LoraConfig` arguments, e.g. `{r: 16, lora_alpha: 32, target_modules: [q_proj, k_proj,
    v_proj, o_proj]}`) trains low-rank adapters only.
    `compile` runs each decoder layer through `torch.compile` (regional: the layers share one
    compiled graph, so compiling costs one layer's time, not the model's).
    `attention` ('causal' | 'bidirectional') and `pooling` ('last' | 'mean'): None takes the
    pretrained folder's (its config.json `is_causal`, its sentence-transformers Pooling
    module), else the recipe's causal attention and last-token pooling.
    """
    if attn_implementation == "auto":
        attn_implementation = default_attention(precision)
    del name  # the config's label, used in logs and run names
    pending = None
    if empty_init:
        if lora:
            raise ValueError("empty_init builds no LoRA adapters: build the model whole")
        if pretrained:
            folder = local_folder(resolve_pretrained(pretrained))
            backbone = empty_backbone(folder, attn_implementation, trust_remote_code)
        else:
            if shape is None:
                raise ValueError("model needs either `pretrained` (hub name or folder) or "
                                 "`shape`")
            folder = None
            backbone = empty_backbone(qwen3_config(**dict(shape)), attn_implementation)
        if attention is not None:
            set_attention(backbone.config, attention)
        # The seed of this process's RNG (seed_everything sets it): a random init from it.
        pending = PendingWeights(folder, torch.initial_seed())
    else:
        backbone = build_backbone(shape, pretrained, attn_implementation, trust_remote_code,
                                  attention, dtype)
    if pooling is None:
        # A local folder's Pooling module (an export of ours, any sentence-transformers folder).
        local = Path(str(pretrained)).expanduser() if pretrained else None
        pooling = (folder_pooling(local) if local and local.is_dir() else None) or "last"
    if gradient_checkpointing:
        backbone.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    if compile:
        for layer in backbone.layers:
            layer.compile()
    if lora:
        from peft import LoraConfig, get_peft_model

        backbone = get_peft_model(backbone, LoraConfig(**dict(lora)))
    # A pretrained folder carries its own tokenizer unless one is named.
    tok = load_tokenizer(tokenizer or pretrained, eos_token, trust_remote_code)
    encoder = Encoder(backbone, tok, max_length, pooling=pooling)
    encoder.pending_weights = pending
    return encoder
