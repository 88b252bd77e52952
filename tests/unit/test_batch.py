"""The batch contracts: Lightning moves a TrainBatch as a whole (through its `.to`), and
`split` inverts the layout the datamodule builds."""

from __future__ import annotations

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from f2llm.data.batch import TrainBatch
from f2llm.model.packing import pack_by_length

B, K, D = 3, 2, 4


def train_batch() -> TrainBatch:
    texts = [[i + 1] * (1 + i % 4) for i in range(B * (2 + K))]
    chunks, restore, padding = pack_by_length(texts, pad_id=0, max_tokens=8)
    return TrainBatch(chunks, restore, batch_size=B, num_negatives=K, use_inbatch=True,
                      format="retrieval", dataset="toy", language="xx", group="toy/xx",
                      indices=np.arange(B), stage="s", epoch=0, position=7,
                      num_tokens=sum(map(len, texts)), num_padding=padding)


def test_lightning_moves_the_whole_batch() -> None:
    batch = train_batch()
    moved = move_data_to_device(batch, torch.device("meta"))  # what the trainer does per batch
    assert isinstance(moved, TrainBatch) and len(moved.chunks) == len(batch.chunks) > 1
    assert all(t.device.type == "meta" for c in moved.chunks for t in c.values())
    assert moved.restore.device.type == "meta"
    assert (moved.position, moved.dataset, moved.num_tokens) == (7, "toy", batch.num_tokens)
    assert batch.restore.device.type == "cpu"  # the original is left as it was


def test_split_inverts_the_layout() -> None:
    # Row r of the embeddings is text r: queries, positives, then negative_1 of every query, ...
    emb = torch.arange(B * (2 + K), dtype=torch.float)[:, None].expand(-1, D)
    query, positive, negatives = train_batch().split(emb)
    assert query[:, 0].tolist() == [0, 1, 2] and positive[:, 0].tolist() == [3, 4, 5]
    assert negatives.shape == (B, K, D)
    assert negatives[:, :, 0].tolist() == [[6, 9], [7, 10], [8, 11]]
