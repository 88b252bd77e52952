"""Weights without a whole copy per process: a backbone built on the meta device (no memory),
sharded, then filled rank by rank with only its own rows.

Under a sharded strategy each rank holds 1/N of every weight. Building the model first would
put the whole float32 model in every rank's host memory (56 GB per rank for the 14B) before the
shards exist. Instead the backbone is built on the meta device, `fully_shard` cuts the (empty)
parameters, and `materialize` fills each rank's rows: from a pretrained folder's safetensors
(memory-mapped, so only those rows are read), or from a random init that is the same whatever
the number of ranks (each block of rows has its own seeded generator).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

ROWS_PER_BLOCK = 1024  # rows drawn by one generator in a random init


@dataclass(frozen=True)
class PendingWeights:
    """Where an empty (meta-device) backbone's weights come from once it is sharded: a
    pretrained folder (its safetensors), or a random init from `seed`."""

    folder: Path | None
    seed: int


def local_folder(name_or_path: str) -> Path:
    """A pretrained model's local folder: the path itself, or the hub snapshot (config and
    safetensors) in the local Hugging Face cache, downloaded once."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors"]))


def empty_backbone(config: Any, attn_implementation: str,
                   trust_remote_code: bool = False) -> PreTrainedModel:
    """The backbone of `config` (a config object, or a pretrained folder whose config.json is
    read) on the meta device: its structure, no memory."""
    if isinstance(config, str | Path):
        config = AutoConfig.from_pretrained(config, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModel.from_config(config, attn_implementation=attn_implementation,
                                     trust_remote_code=trust_remote_code)


def is_empty(module: nn.Module) -> bool:
    """Whether any parameter of `module` is on the meta device (built by `empty_backbone`)."""
    return any(p.is_meta for p in module.parameters())


def local_rows(param: Tensor) -> tuple[int, int]:
    """The rows [start, stop) of the whole tensor that this rank holds of `param`: all of them
    for a plain tensor; for FSDP2's DTensor (`Shard(0)` on a 1-D mesh), the rank's part as
    `torch.chunk` cuts dim 0 (FSDP2's documented sharding)."""
    from torch.distributed.tensor import DTensor, Shard

    rows = param.shape[0]
    if not isinstance(param, DTensor):
        return 0, rows
    if tuple(param.placements) != (Shard(0),):
        raise ValueError(f"expected a Shard(0) placement, got {param.placements}")
    world, rank = param.device_mesh.size(), param.device_mesh.get_local_rank()
    chunk = -(-rows // world)
    start = min(rank * chunk, rows)
    stop = min(start + chunk, rows)
    if param.to_local().shape[0] != stop - start:
        raise ValueError(f"rank {rank} holds {param.to_local().shape[0]} rows of {rows}, "
                         f"expected {stop - start}")
    return start, stop


def materialize(root: nn.Module, backbone: PreTrainedModel, pending: PendingWeights,
                device: torch.device) -> None:
    """Allocate the (meta, possibly sharded) parameters of `root` on `device` and fill this
    rank's rows of each of `backbone`'s (module docstring); recompute the non-persistent
    buffers. `root`: the outermost module (the FSDP2 root unit, whose `to_empty` re-registers
    the shards), holding `backbone`."""
    root.to_empty(device=device)
    reader = _SafetensorsRows(pending.folder) if pending.folder is not None else None
    std = getattr(backbone.config, "initializer_range", 0.02)
    owners = dict(backbone.named_modules())
    with torch.no_grad():
        for name, param in backbone.named_parameters():
            start, stop = local_rows(param)
            local = param.to_local() if hasattr(param, "to_local") else param
            if reader is not None:
                local.copy_(reader.rows(name, start, stop))
            else:
                owner = owners[name.rpartition(".")[0]]
                local.copy_(_random_rows(name, owner, param.shape, start, stop, std,
                                         pending.seed))
    _recompute_buffers(backbone, device)


def _random_rows(name: str, owner: nn.Module, shape: torch.Size, start: int, stop: int,
                 std: float, seed: int) -> Tensor:
    """Rows [start, stop) of the init transformers' `_init_weights` gives a Qwen3 parameter:
    normal(0, initializer_range) for Linear and Embedding weights (an embedding's padding row
    zero), zeros for biases, ones for RMSNorm weights. Each block of `ROWS_PER_BLOCK` rows has
    its own generator, so the values do not depend on how the rows are split across ranks."""
    kind = type(owner).__name__
    if name.endswith("bias"):
        return torch.zeros(stop - start, *shape[1:])
    if "RMSNorm" in kind or "LayerNorm" in kind:
        return torch.ones(stop - start, *shape[1:])
    if not isinstance(owner, nn.Linear | nn.Embedding):
        raise TypeError(f"{name}: no random init for a parameter of {kind}")
    blocks = []
    for block in range(start // ROWS_PER_BLOCK, -(-stop // ROWS_PER_BLOCK)):
        first = block * ROWS_PER_BLOCK
        rows = min(ROWS_PER_BLOCK, shape[0] - first)
        generator = torch.Generator().manual_seed(
            (seed * 1_000_003 + zlib.crc32(name.encode()) * 1009 + block) % 2**63)
        values = torch.randn(rows, *shape[1:], generator=generator) * std
        blocks.append(values[max(start - first, 0) : stop - first])
    out = torch.cat(blocks)
    padding = getattr(owner, "padding_idx", None)
    if padding is not None and start <= padding < stop:
        out[padding - start] = 0
    return out


def _recompute_buffers(backbone: nn.Module, device: torch.device) -> None:
    """Non-persistent buffers are in no checkpoint: rebuild the modules that hold them (the
    rotary embedding's frequencies) from the config, in float32, and take their buffers."""
    for module in backbone.modules():
        names = [n for n, _ in module.named_buffers(recurse=False)]
        if not names:
            continue
        if not hasattr(module, "config"):
            raise TypeError(f"{type(module).__name__} holds buffers {names} that cannot be "
                            "rebuilt after a meta-device build")
        fresh = type(module)(module.config)
        for n in names:
            module._buffers[n] = fresh._buffers[n].to(device)


class _SafetensorsRows:
    """Rows of the tensors of a pretrained folder's safetensors files, memory-mapped: reading
    rows [a, b) of a tensor touches only those bytes. Names are the backbone's (a causal-LM
    checkpoint's `model.` prefix is taken off, as `AutoModel` does)."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        folder = Path(folder)
        index = folder / "model.safetensors.index.json"
        files = (sorted(set(json.loads(index.read_text())["weight_map"].values()))
                 if index.exists() else ["model.safetensors"])
        self.where: dict[str, tuple[Any, str]] = {}
        self._handles = []
        for file in files:
            handle = safe_open(str(folder / file), framework="pt", device="cpu")
            self._handles.append(handle)
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                self.where[key.removeprefix("model.")] = (handle, key)
        self.folder = folder

    def rows(self, name: str, start: int, stop: int) -> Tensor:
        if name not in self.where:
            raise KeyError(f"{self.folder}: no tensor for the parameter {name!r}")
        handle, key = self.where[name]
        return handle.get_slice(key)[start:stop].float()


def load_rows(module: nn.Module, state: Mapping[str, Tensor], strict: bool = True) -> None:
    """Copy whole tensors `state` (e.g. a memory-mapped checkpoint's) into `module`'s
    parameters and buffers, each rank taking only its rows of a sharded one."""
    own = module.state_dict(keep_vars=True)  # parameters and persistent buffers
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        raise KeyError(f"weights do not match the model: missing {missing[:5]}, unexpected "
                       f"{unexpected[:5]}")
    with torch.no_grad():
        for name, tensor in own.items():
            if name not in state:
                continue
            start, stop = local_rows(tensor)
            local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
            local.copy_(state[name][start:stop] if tensor.dim() else state[name])
