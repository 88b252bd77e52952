"""The embedding model: a Qwen3 decoder, EOS-terminated inputs, last-token pooling."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from f2llm.model.tokenizer import DEFAULT_EOS, load_tokenizer

QUERY_TEMPLATE = "Instruct: {task}\nQuery: {text}"


def qwen3_config(**shape: Any) -> Qwen3Config:
    """A Qwen3 config for an embedding backbone (tied embeddings, no LM head needed)."""
    shape.setdefault("tie_word_embeddings", True)
    return Qwen3Config(**shape)


def build_backbone(
    shape: Mapping[str, Any] | None = None,
    pretrained: str | Path | None = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Random init from `shape`, or `from_pretrained` of a hub name or local folder."""
    if pretrained:
        # AutoModel strips a causal-LM checkpoint down to its decoder (Qwen3Model).
        model = AutoModel.from_pretrained(
            resolve_pretrained(pretrained),
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            dtype=torch.float32,
        )
        # `from_pretrained` returns the model in eval mode, and Lightning keeps the modes it
        # finds: trained so, gradient checkpointing (active only in train mode) and any dropout
        # would be silently off. A built backbone is for training, as a random init is.
        return model.train()
    if shape is None:
        raise ValueError("model needs either `pretrained` (hub name or folder) or `shape`")
    config = qwen3_config(**dict(shape))
    config._attn_implementation = attn_implementation
    return Qwen3Model(config)


def default_attention() -> str:
    """flash_attention_2 where it can run (the package and a CUDA device), else sdpa."""
    import importlib.util

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def last_token_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Hidden state of the last real token, whatever side the padding is on."""
    seq_len = attention_mask.shape[1]
    # Position of the last 1 in each row: flip, find the first 1, map back.
    last = seq_len - 1 - attention_mask.flip(-1).int().argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class Encoder(nn.Module):
    """Texts -> raw (unnormalised) embeddings of size `hidden_size`."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 512,
        query_template: str = QUERY_TEMPLATE,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.query_template = query_template

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
        pooled = last_token_pool(out.last_hidden_state, attention_mask)
        if not layers:
            return pooled
        return torch.stack([pooled, *self.layer_embeddings(out.hidden_states, attention_mask,
                                                           layers)], dim=1)

    def layer_embeddings(self, hidden_states: Sequence[Tensor], attention_mask: Tensor,
                         layers: Sequence[int]) -> list[Tensor]:
        """The pooled output of each 1-based decoder layer in `layers` (below the last), after
        the final norm: the embedding a model cut to its first `layer` layers would give.

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
        return [last_token_pool(norm(hidden_states[x]), attention_mask) for x in layers]

    def forward_chunks(self, chunks: Sequence[dict[str, Tensor]], restore: Tensor,
                       layers: Sequence[int] | None = None) -> Tensor:
        """Embeddings of length-sorted chunks, returned in the batch's original text order.

        The token embeddings of all chunks are looked up in one call: each lookup's backward
        materialises a dense vocabulary-sized gradient, which for a small model costs more
        than the transformer layers.
        """
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
) -> Encoder:
    """Build the encoder a `configs/model/*.yaml` describes.

    `attn_implementation: auto` picks flash-attention 2 when the `flash_attn` package and a
    GPU are there, else sdpa. `lora` (peft `LoraConfig` arguments, e.g. `{r: 16, lora_alpha:
    32, target_modules: [q_proj, k_proj, v_proj, o_proj]}`) trains low-rank adapters only.
    `compile` runs each decoder layer through `torch.compile` (regional: the layers share one
    compiled graph, so compiling costs one layer's time, not the model's).
    """
    if attn_implementation == "auto":
        attn_implementation = default_attention()
    del name  # the config's label, used in logs and run names
    backbone = build_backbone(shape, pretrained, attn_implementation, trust_remote_code)
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
    return Encoder(backbone, tok, max_length)
