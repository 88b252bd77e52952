"""Encoder: Qwen3 backbone, EOS, last-token pooling, query prompts."""

from f2llm.model.encoder import (
    QUERY_TEMPLATE,
    Encoder,
    attention_of,
    build_backbone,
    build_encoder,
    folder_pooling,
    last_token_pool,
    mean_pool,
    qwen3_config,
)
from f2llm.model.tokenizer import (
    TruncatingTokenizer,
    append_eos,
    bundled_qwen3_tokenizer,
    load_tokenizer,
)

__all__ = [
    "QUERY_TEMPLATE",
    "Encoder",
    "TruncatingTokenizer",
    "append_eos",
    "attention_of",
    "build_backbone",
    "build_encoder",
    "bundled_qwen3_tokenizer",
    "folder_pooling",
    "last_token_pool",
    "load_tokenizer",
    "mean_pool",
    "qwen3_config",
]
