"""Model shapes, EOS, last-token pooling, prompts and local from_pretrained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModel, Qwen3ForCausalLM

from f2llm.model import build_encoder, last_token_pool, qwen3_config
from tests.conftest import PUBLISHED, model_config, tiny_encoder


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name: str) -> None:
    cfg = model_config(name)
    with torch.device("meta"):
        model = AutoModel.from_config(qwen3_config(**cfg.shape))
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    assert model.config.vocab_size == 151_936 and model.config.head_dim == 128


def test_eos_appended_and_kept_under_truncation() -> None:
    enc = tiny_encoder()
    eos = enc.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    batch = enc.tokenize(["Hello world", "word " * 100])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[1] == 32
    last = mask.sum(1) - 1
    assert (ids[torch.arange(2), last] == eos).all()


def test_last_token_pool_picks_last_real_token() -> None:
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_pool(hidden, right).flatten().tolist() == [1.0, 7.0]
    assert last_token_pool(hidden, left).flatten().tolist() == [3.0, 7.0]


def test_left_and_right_padding_give_equal_embeddings() -> None:
    enc = tiny_encoder().eval()
    texts = ["short", "a considerably longer sentence with several more tokens in it"]
    with torch.no_grad():
        enc.tokenizer.padding_side = "right"
        right = enc(**enc.tokenize(texts))
        enc.tokenizer.padding_side = "left"
        left_batch = enc.tokenize(texts)
        left = enc(**left_batch)
        alone = torch.cat([enc(**enc.tokenize([t])) for t in texts])
    assert left_batch["attention_mask"][0, 0] == 0  # really left-padded
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, right, atol=1e-5, rtol=1e-5)


def test_query_instruction_format() -> None:
    enc = tiny_encoder()
    task = "Retrieve parallel sentences"
    assert enc.format_query("Bonjour", task) == f"Instruct: {task}\nQuery: Bonjour"
    assert enc.format_query("Bonjour", None) == "Bonjour"
    assert enc.query_prompt(task) == f"Instruct: {task}\nQuery: "


def test_from_pretrained_local_folder(tmp_path: Path) -> None:
    """A causal-LM checkpoint saved to a folder loads as the backbone with the same weights."""
    enc = tiny_encoder()
    lm = Qwen3ForCausalLM(enc.backbone.config)
    lm.model.load_state_dict(enc.backbone.state_dict())
    lm.save_pretrained(tmp_path / "ckpt")
    enc.tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded = build_encoder("local", pretrained=str(tmp_path / "ckpt"), max_length=32)
    # Built for training: HF hands it over in eval mode, where gradient checkpointing is off.
    assert all(m.training for m in loaded.backbone.modules())
    texts = ["Datei nicht gefunden", "file not found"]
    torch.testing.assert_close(loaded.encode(texts), enc.encode(texts))


def test_missing_model_source_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="pretrained"):
        build_encoder("nothing")


def test_loader_tokenization_equals_the_tokenizer_call(tmp_path: Path) -> None:
    """The datamodule's Rust fast path gives the ids of `tokenizer(truncation=True)`, and leaves
    the tokenizer's own truncation and padding as they were: a tokenizer saved after it (the
    export) is the same file."""
    from f2llm.model.tokenizer import TruncatingTokenizer

    enc = tiny_encoder()
    backend = enc.tokenizer.backend_tokenizer
    backend.enable_padding(pad_id=enc.tokenizer.pad_token_id, pad_token="<|endoftext|>",
                           pad_to_multiple_of=8)  # as a padded call leaves it
    before = (backend.truncation, backend.padding)
    enc.tokenizer.save_pretrained(tmp_path / "before")
    texts = ["", "file not found", "Datei nicht gefunden " * 40, "日本語のテキスト " * 30,
             "Instruct: Retrieve\nQuery: ünïcödé"]
    fast = TruncatingTokenizer(enc.tokenizer, 32)(texts)
    assert (backend.truncation, backend.padding) == before
    enc.tokenizer.save_pretrained(tmp_path / "after")
    assert ((tmp_path / "after" / "tokenizer.json").read_bytes()
            == (tmp_path / "before" / "tokenizer.json").read_bytes())
    backend.no_padding()
    assert fast == enc.tokenizer(texts, truncation=True, max_length=32)["input_ids"]
    eos = enc.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert max(map(len, fast)) == 32 and all(ids[-1] == eos for ids in fast)
    assert min(map(len, fast)) == 1  # unpadded: "" is its EOS alone


def test_forward_chunks_equals_each_chunk_alone_in_value_and_gradient() -> None:
    # One shared token-embedding lookup for all chunks, split per chunk: the embeddings and
    # every parameter's gradient equal those of running each chunk through the model alone.
    enc = tiny_encoder().double()
    chunks = [enc.tokenize(["a short one", "and another text here"]),
              enc.tokenize(["the longest text of the three chunks, by far"]),
              enc.tokenize(["x", "y z", "w"])]
    restore = torch.tensor([3, 0, 5, 2, 1, 4])
    weights = torch.randn(6, enc.hidden_size, dtype=torch.float64)

    def grads(emb: torch.Tensor) -> dict[str, torch.Tensor]:
        enc.zero_grad(set_to_none=True)
        (emb * weights).sum().backward()
        return {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}

    shared = enc.forward_chunks(chunks, restore)
    shared_grads = grads(shared)
    alone = torch.cat([enc(**chunk) for chunk in chunks])[restore]
    alone_grads = grads(alone)
    torch.testing.assert_close(shared, alone, rtol=0, atol=1e-12)
    assert shared_grads.keys() == alone_grads.keys()
    for name, grad in shared_grads.items():
        torch.testing.assert_close(grad, alone_grads[name], rtol=0, atol=1e-12, msg=name)
