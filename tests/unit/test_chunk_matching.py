"""`split_to_count`: a rank's chunks cut to the count every rank agrees on, nothing lost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from f2llm.model.packing import pack_by_length, split_to_count
from tests.conftest import tiny_encoder


def _rows(chunks: list[dict[str, torch.Tensor]]) -> list[list[int]]:
    """Every row's real token ids, in concatenated chunk order."""
    return [ids[mask.bool()].tolist() for chunk in chunks
            for ids, mask in zip(chunk["input_ids"], chunk["attention_mask"], strict=True)]


def test_split_keeps_every_row_in_order_and_only_adds_pad_rows_at_the_end() -> None:
    rng = np.random.default_rng(0)
    texts = [rng.integers(3, 100, int(n)).tolist() for n in rng.integers(1, 20, 13)]
    chunks, restore, _ = pack_by_length(texts, pad_id=0, max_tokens=40)
    for count in range(len(chunks), 20):
        got = split_to_count(chunks, count, pad_id=0)
        assert len(got) == count
        rows = _rows(got)
        assert [rows[i] for i in restore.tolist()] == texts  # restore still indexes them
        assert rows[len(texts):] == [[0]] * (len(rows) - len(texts))  # one-token fillers
        # No chunk grows wider than a chunk it came from.
        assert max(c["input_ids"].numel() for c in got) <= max(
            c["input_ids"].numel() for c in chunks)


def test_split_trims_each_half_to_the_columns_it_uses() -> None:
    chunks, _, _ = pack_by_length([[5] * 2, [5] * 3, [5] * 9, [5] * 10], pad_id=0,
                                  max_tokens=100)
    low, high = split_to_count(chunks, 2, pad_id=0)
    assert low["input_ids"].shape == (2, 3) and high["input_ids"].shape == (2, 10)


def test_split_refuses_fewer_chunks() -> None:
    chunks, _, _ = pack_by_length([[1, 2], [3, 4, 5]], pad_id=0, max_tokens=3)
    with pytest.raises(ValueError, match="cannot become"):
        split_to_count(chunks, 1, pad_id=0)


def test_matched_chunks_embed_like_the_batch_alone() -> None:
    """The split chunks (and the filler rows, dropped) give the embeddings of the batch."""
    encoder = tiny_encoder()
    rng = np.random.default_rng(1)
    texts = [rng.integers(3, 1000, int(n)).tolist() for n in rng.integers(2, 12, 9)]
    chunks, restore, _ = pack_by_length(texts, encoder.tokenizer.pad_token_id, max_tokens=30)
    expected = encoder.forward_chunks(chunks, restore)
    split = split_to_count(chunks, len(texts) + 3, encoder.tokenizer.pad_token_id)
    got = encoder.forward_chunks(split, restore, match=False)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
