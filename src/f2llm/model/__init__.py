"""Encoder: Qwen3 backbone, EOS, last-token pooling, query prompts."""

from f2llm.model.encoder import (
    QUERY_TEMPLATE,
    Encoder,
    build_backbone,
    build_encoder,
    last_token_pool,
    qwen3_config,
)
from f2llm.model.tokenizer import append_eos, bundled_qwen3_tokenizer, load_tokenizer

__all__ = [
    "QUERY_TEMPLATE",
    "Encoder",
    "append_eos",
    "build_backbone",
    "build_encoder",
    "bundled_qwen3_tokenizer",
    "last_token_pool",
    "load_tokenizer",
    "qwen3_config",
]
