"""`FileCheckpointIO`: a checkpoint written straight to a file, renamed into place, never held
in memory as a second copy; what `train()`'s trainer saves with."""

from __future__ import annotations

import os
import pickle
import tracemalloc
from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.cloud_io import _atomic_save

from f2llm.checkpoint_io import FileCheckpointIO

MIB = 1 << 20


def checkpoint(value: float, mib: int = 8) -> dict:
    return {"state_dict": {"w": torch.full((mib * MIB // 4,), value)}, "global_step": 3,
            "loops": {"fit_loop": {"epoch": 0}}}


def test_written_checkpoint_loads_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    io = FileCheckpointIO()
    io.save_checkpoint(checkpoint(1.0), tmp_path / "checkpoints" / "last.ckpt")  # makes the folder
    io.save_checkpoint(checkpoint(2.0), f"file://{tmp_path}/checkpoints/step.ckpt")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt",
                                                                           "step.ckpt"]
    loaded = io.load_checkpoint(tmp_path / "checkpoints" / "step.ckpt", weights_only=True)
    assert loaded["global_step"] == 3 and bool((loaded["state_dict"]["w"] == 2.0).all())


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path: Path) -> None:
    io = FileCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(checkpoint(1.0), path)
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a local lambda: no pickle
        io.save_checkpoint({**checkpoint(2.0), "bad": lambda: None}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert bool((torch.load(path, weights_only=True)["state_dict"]["w"] == 1.0).all())


def test_each_save_is_a_new_file_so_a_hard_link_keeps_the_older_one(tmp_path: Path) -> None:
    io = FileCheckpointIO()
    io.save_checkpoint(checkpoint(1.0), tmp_path / "last.ckpt")
    os.link(tmp_path / "last.ckpt", tmp_path / "stage-stage1-end.ckpt")
    io.save_checkpoint(checkpoint(2.0), tmp_path / "last.ckpt")
    kept = torch.load(tmp_path / "stage-stage1-end.ckpt", weights_only=True)
    assert bool((kept["state_dict"]["w"] == 1.0).all())


def test_no_copy_of_the_checkpoint_in_memory(tmp_path: Path) -> None:
    """Python-side allocations while saving a 32 MiB checkpoint: Lightning's atomic save builds
    it in a buffer and copies the buffer (about twice its size); this writes it to the file."""
    state = checkpoint(1.0, mib=32)

    def peak(save) -> float:
        tracemalloc.start()
        try:
            save(state, tmp_path / "x.ckpt")
            return tracemalloc.get_traced_memory()[1] / MIB
        finally:
            tracemalloc.stop()

    assert peak(_atomic_save) > 32  # what this replaces, measured the same way
    assert peak(FileCheckpointIO().save_checkpoint) < 4


def test_train_saves_through_it(tmp_path: Path, locale_dir: Path) -> None:
    from f2llm.train import build
    from tests.conftest import compose_train, tiny_overrides

    _, _, trainer = build(compose_train(tiny_overrides(tmp_path, locale_dir)))
    assert isinstance(trainer.strategy.checkpoint_io, FileCheckpointIO)
