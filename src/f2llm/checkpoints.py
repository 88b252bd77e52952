"""Reading Lightning checkpoints: a damaged file is named; a run folder falls back past it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from f2llm.errors import DamagedFile, NotFound

log = logging.getLogger(__name__)


def read_checkpoint(path: str | Path, setting: str = "ckpt_path", mmap: bool = False
                    ) -> dict[str, Any]:
    """The checkpoint's contents (tensors and plain containers only: `weights_only=True`).

    A truncated or foreign file raises `DamagedFile` naming it: torch's own errors (`OSError:
    [Errno 22] Invalid argument`, `failed finding central directory`) name no file.
    `mmap=True` maps the tensors instead of reading them: a cheap check that the file loads.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{setting}={path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # whatever torch's zip reader or unpickler says about the bytes
        # torch's first sentence says what is wrong; the rest is advice about corrupted files.
        reason = (str(err).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
        raise DamagedFile(f"{setting}: the checkpoint {path} is damaged and cannot be loaded "
                          f"({type(err).__name__}: {reason})") from err


def is_sharded_checkpoint(path: Path) -> bool:
    """A folder written by a sharded strategy (trainer=fsdp): one file per rank + meta.pt."""
    return path.is_dir() and (path / "meta.pt").is_file()


def saved_at(path: Path) -> float:
    """When a checkpoint was written: a sharded folder's newest file (re-saving `last.ckpt`
    rewrites its files and need not touch the folder's own time)."""
    if path.is_dir():
        return max((p.stat().st_mtime for p in path.iterdir()), default=path.stat().st_mtime)
    return path.stat().st_mtime


def newest_loadable(folder: str | Path, setting: str = "ckpt_path") -> Path:
    """The newest `*.ckpt` in `folder` that loads; each damaged newer one is logged as a warning.

    A checkpoint that is a folder (FSDP's sharded format) is taken as is: Lightning reads it.
    """
    folder = Path(folder)
    # At equal times (file times tick coarsely) last.ckpt is the newer: Lightning writes it
    # after the step's own checkpoint.
    found = sorted(folder.glob("*.ckpt"), key=lambda p: (saved_at(p), p.name == "last.ckpt"),
                   reverse=True)
    if not found:
        raise NotFound(f"{setting}={folder}: no .ckpt files in {folder}")
    damaged: list[Path] = []
    for ckpt in found:
        if ckpt.is_dir():
            return ckpt
        try:
            read_checkpoint(ckpt, setting, mmap=True)
        except DamagedFile as err:
            log.warning("%s; trying the next newest checkpoint", err)
            damaged.append(ckpt)
            continue
        if damaged:
            log.warning("%s: using %s, the newest checkpoint that loads", setting, ckpt)
        return ckpt
    raise DamagedFile(f"{setting}={folder}: none of its {len(found)} checkpoints loads (all "
                      f"damaged: {', '.join(p.name for p in damaged)})")


def check_loadable(path: str | Path, setting: str) -> None:
    """A checkpoint named by the config loads: a file (memory-mapped, so cheap) or a sharded
    folder (its metadata); a damaged or missing one stops the run now with one message."""
    path = Path(path)
    if is_sharded_checkpoint(path):
        read_checkpoint(path / "meta.pt", setting)
        return
    read_checkpoint(path, setting, mmap=True)


def load_weights(module: torch.nn.Module, path: str | Path, setting: str = "init_from") -> None:
    """The model weights of a Lightning checkpoint into `module`, nothing else (no optimiser
    state, no training position).

    A `.ckpt` file is memory-mapped: only the weights are read, and a sharded module takes
    only its own rows of each (`f2llm.model.weights.load_rows`). A sharded checkpoint folder
    (one file per rank) is read with `torch.distributed.checkpoint`, which reshards it to any
    number of ranks, sharded or not."""
    from f2llm.model.weights import load_rows

    path = Path(path)
    if is_sharded_checkpoint(path):
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        state = {"state_dict": module.state_dict()}
        try:
            dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
        except Exception as err:
            raise DamagedFile(f"{setting}={path}: the sharded checkpoint does not load into "
                              f"this model ({type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0]})") from err
        # In place, except where DCP swapped a tensor in: load what it returned.
        module.load_state_dict(state["state_dict"])
    else:
        weights = read_checkpoint(path, setting, mmap=True)["state_dict"]
        try:
            load_rows(module, weights)
        except KeyError as err:
            raise DamagedFile(f"{setting}={path}: {err.args[0]}") from None
    log.info("initialised weights from %s", path)
