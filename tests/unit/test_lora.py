"""LoRA through peft: only the adapters train; the export merges them and loads plainly."""

from __future__ import annotations

from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer

from f2llm.export import export_sentence_transformers
from f2llm.model import build_encoder

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"],
        "init_lora_weights": False}  # non-zero adapters, so merging changes the weights
SHAPE = dict(vocab_size=151_936, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, head_dim=16, intermediate_size=64)


def test_lora_trains_adapters_only_and_exports_merged(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = build_encoder("tiny", shape=SHAPE, max_length=32, lora=LORA)
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    texts = ["Open file", "Datei öffnen", "ファイルを開く"]
    batch = enc.tokenize(texts)
    enc(**batch).pow(2).sum().backward()
    assert all(p.grad is not None for n, p in enc.named_parameters() if p.requires_grad)
    path = export_sentence_transformers(enc, tmp_path / "export")
    theirs = SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(theirs, enc.encode(texts), atol=1e-5, rtol=0)
    assert hasattr(enc.backbone, "peft_config")  # training's adapters are untouched
