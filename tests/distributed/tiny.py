"""The tests' tiny encoder for the gloo tests, built once per process and copied per use:
loading the tokenizer takes longer than a small case's training (the copies share it)."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from f2llm.model import Encoder
from tests.conftest import tiny_encoder

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"],
        "init_lora_weights": False}


@cache
def _built(lora: bool) -> Encoder:
    return tiny_encoder(lora=LORA) if lora else tiny_encoder()


def fresh_encoder(lora: bool = False) -> Encoder:
    """`tiny_encoder()` (with `lora`: with LoRA adapters `LORA`), the same weights every call."""
    template = _built(lora)
    memo: dict[int, Any] = {id(template.tokenizer): template.tokenizer}
    return copy.deepcopy(template, memo)
