"""Precision: buffers stay float32 whatever the model is cast to, and every forward outside the
training step runs where a half-precision-only attention kernel (flash-attention) accepts it.

No flash-attention here: a kernel registered through transformers' AttentionInterface stands
in for it. It asks transformers' own `get_target_dtype` (integrations/flash_attention.py: the
dtype transformers casts a float32 query to before calling flash-attention) and refuses
float32, as flash-attention does, then computes with sdpa.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.flash_attention import get_target_dtype
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import f2llm.model.encoder as encoder_module
from f2llm.config_checks import ConfigError, check_config
from f2llm.evaluation.embedders import PackedEncoder
from f2llm.model.encoder import default_attention, inference_autocast
from f2llm.model.tokenizer import TruncatingTokenizer
from f2llm.model.vocab import trim_input_embeddings
from f2llm.pruning.importance import encoder_importance
from tests.conftest import compose_train, tiny_encoder

HALF_ONLY = "half_only_test"
TEXTS = ["Open the file", "Datei öffnen", "ファイルを開く", "a longer text than the others"]


def _half_only(module, query, *args, **kwargs):
    target = get_target_dtype(query, module)
    if (target or query.dtype) == torch.float32:
        raise RuntimeError("FlashAttention only supports fp16 and bf16 data type")
    return sdpa_attention_forward(module, query.to(target or query.dtype), *args, **kwargs)


@pytest.fixture()
def half_only_encoder(monkeypatch: pytest.MonkeyPatch):
    AttentionInterface.register(HALF_ONLY, _half_only)
    monkeypatch.setattr(encoder_module, "HALF_ONLY_ATTENTION",
                        encoder_module.HALF_ONLY_ATTENTION | {HALF_ONLY})
    encoder = tiny_encoder()
    encoder.backbone.config._attn_implementation = HALF_ONLY
    return encoder


def test_the_stand_in_kernel_refuses_float32(half_only_encoder) -> None:
    batch = half_only_encoder.tokenize(TEXTS)
    with pytest.raises(RuntimeError, match="fp16 and bf16"):
        half_only_encoder(**batch)


def test_forwards_outside_training_run_under_autocast(half_only_encoder) -> None:
    encoder = half_only_encoder
    embedded = encoder.encode(TEXTS)  # evaluation, export checks, mining
    assert embedded.dtype == torch.float32 and torch.isfinite(embedded).all()
    importance = encoder_importance(encoder, TEXTS, batch_size=2, progress=False)  # pruning
    assert torch.isfinite(importance.neurons).all()
    packed = PackedEncoder(encoder, TruncatingTokenizer(encoder.tokenizer, 32),
                           torch.device("cpu"))
    assert torch.isfinite(packed.embed(TEXTS, None)).all()  # held-out evaluation
    with inference_autocast(encoder.backbone):
        assert torch.is_autocast_enabled("cpu")


def test_no_autocast_where_the_kernel_takes_float32() -> None:
    encoder = tiny_encoder()  # sdpa
    with inference_autocast(encoder.backbone):
        assert not torch.is_autocast_enabled("cpu")


def test_casting_the_model_keeps_floating_buffers_at_their_dtype() -> None:
    encoder = tiny_encoder()
    trim_input_embeddings(encoder.backbone, torch.arange(10, 500))
    before = {n: b.clone() for n, b in encoder.named_buffers()}
    encoder.to(torch.bfloat16)
    assert next(encoder.parameters()).dtype == torch.bfloat16
    for name, buffer in encoder.named_buffers():
        assert buffer.dtype == before[name].dtype, name  # inv_freq float32, decay float64
        assert torch.equal(buffer, before[name]), name  # not rounded on the way
    assert any(n.endswith("inv_freq") for n in before)


def test_auto_attention_picks_sdpa_for_32_bit_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else real(name, *a))
    assert default_attention("bf16-mixed") == "flash_attention_2"
    assert default_attention("32-true") == "sdpa"


@pytest.mark.parametrize(("overrides", "named"), [
    (["model.attn_implementation=flash_attention_2", "trainer.precision=32-true"],
     ["model.attn_implementation=flash_attention_2", "trainer.precision=32-true",
      "bf16/fp16 only"]),
    (["trainer=fsdp_sim", "optimizer=adamw8bit"],
     ["optimizer=bitsandbytes.optim.AdamW8bit", "FSDP2Strategy", "cannot update sharded"]),
    (["trainer=fsdp", "optimizer=paged_adamw8bit"],
     ["optimizer=bitsandbytes.optim.PagedAdamW8bit", "FSDP2Strategy"]),
    (["trainer=fsdp_sim", "+callbacks@callbacks.pruning=pruning",
      "+model@callbacks.pruning.target=tiny_half"], ["callbacks.pruning", "FSDP2Strategy"]),
])
def test_combinations_that_cannot_work_stop_before_any_work(overrides: list[str],
                                                            named: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        check_config(compose_train(overrides))
    for words in named:  # one message naming both settings
        assert words in str(caught.value)


def test_the_frozen_encoder_loads_in_the_training_precision(tmp_path) -> None:
    from f2llm.export import export_sentence_transformers
    from f2llm.model.frozen import build_frozen_encoder

    folder = export_sentence_transformers(tiny_encoder(), tmp_path / "teacher")
    for precision, dtype in (("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)):
        teacher = build_frozen_encoder(folder, mode="online", precision=precision)
        assert {p.dtype for p in teacher.parameters()} == {dtype}
        assert teacher.encoder.backbone.rotary_emb.inv_freq.dtype == torch.float32
