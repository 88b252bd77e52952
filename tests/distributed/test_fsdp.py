"""FSDP2 (`trainer=fsdp` / `fsdp_sim`): the configs build the strategy, the encoder shards
and computes what the unsharded one does, the gathered copy has the same weights, a sharded
checkpoint folder resumes. Two ranks evaluating the held-out sets as one process does is the
check of the documented `trainer=fsdp_sim` command (tests/commands/test_readme.py); the 2-process
run with kill, resume and export is in tests/scripts/test_gpu_check.py, which runs
scripts/gpu_check.py --toy."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from lightning.pytorch.strategies import ModelParallelStrategy
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

from f2llm.model import build_encoder
from f2llm.parallel import FSDP2Strategy, gathered_encoder, is_sharded, shard_encoder
from f2llm.train import resolve_ckpt_path
from tests.conftest import TINY_SHAPE, compose_train

SHAPE = {k.removeprefix("model.shape."): v for k, v in TINY_SHAPE.items()}


@pytest.mark.parametrize("name", ["fsdp", "fsdp_sim"])
def test_fsdp2_configs_build_the_strategy(name: str, tmp_path: Path) -> None:
    cfg = compose_train([f"trainer={name}", f"paths.output_dir={tmp_path}"],
                        experiment="gettext_tiny")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDP2Strategy) and isinstance(strategy, ModelParallelStrategy)
    assert strategy.layer_classes == (Qwen3DecoderLayer,)
    assert strategy._tensor_parallel_size == 1
    assert strategy._save_distributed_checkpoint  # one shard file per rank
    assert cfg.trainer.use_distributed_sampler is False  # the sampler shards the batches
    if name == "fsdp_sim":
        trainer = instantiate(cfg.trainer, logger=False)  # processes start only in fit
        assert trainer.num_devices == 2 and trainer.world_size == 2
        assert trainer.strategy.process_group_backend == "gloo"
    else:
        assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"


def test_fsdp2_rejects_an_unknown_param_dtype() -> None:
    with pytest.raises(ValueError, match="param_dtype"):
        FSDP2Strategy(layer_classes=[Qwen3DecoderLayer], param_dtype="int8")


@pytest.fixture()
def one_process_group(tmp_path: Path):
    """A one-rank gloo group: fully_shard's code paths without spawning."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def test_sharded_encoder_equals_unsharded_and_gathers_back(one_process_group: None) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    torch.manual_seed(0)
    encoder = build_encoder("tiny", shape={**SHAPE, "vocab_size": 151936,
                                           "max_position_embeddings": 512}, max_length=16)
    plain = copy.deepcopy(encoder)
    texts = ["a short text", "a somewhat longer text than the first one", "x"]
    batch = encoder.tokenize(texts)
    chunks = [batch]
    restore = torch.arange(len(texts))
    expected = plain.forward_chunks(chunks, restore)

    mesh = init_device_mesh("cpu", (1,))
    units = shard_encoder(encoder, mesh, [Qwen3DecoderLayer])
    assert units == SHAPE["num_hidden_layers"] and is_sharded(encoder)
    assert shard_encoder(encoder, mesh, [Qwen3DecoderLayer]) == units  # idempotent
    got = encoder.forward_chunks(chunks, restore)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    got.sum().backward()  # gradients reach the sharded parameters
    assert all(p.grad is not None for p in encoder.parameters())

    copy_ = gathered_encoder(encoder)
    assert copy_ is not None and not is_sharded(copy_)
    for (name, a), b in zip(plain.state_dict().items(), copy_.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(copy_.encode(texts), plain.encode(texts), rtol=0, atol=0)


def test_a_sharded_checkpoint_folder_resumes(tmp_path: Path) -> None:
    checkpoints = tmp_path / "run" / "checkpoints"
    older, newer = checkpoints / "step=2.ckpt", checkpoints / "last.ckpt"
    for folder in (older, newer):
        folder.mkdir(parents=True)
        (folder / "__0_0.distcp").write_bytes(b"")
        (folder / "meta.pt").write_bytes(b"")
    # last.ckpt rewritten in place: its files are newer, the folder's own time is not.
    os.utime(newer, (1, 1))
    assert resolve_ckpt_path(str(newer)) == str(newer)  # the folder itself, not a run folder
    assert resolve_ckpt_path(str(tmp_path / "run")) == str(newer)
