"""The gloo tests' rank processes: `start_ranks(fn, args, nprocs)` is
`torch.multiprocessing.start_processes(..., start_method="spawn")`, but each rank is a fork of
one server per test process that has imported torch, transformers, Lightning and f2llm once
(Python's `forkserver` start method). A spawned rank is a fresh interpreter that spends 5-7 s
of CPU importing them before its first line; the suite starts some ten.

A rank starts as the server did (no threads, no process group, nothing trained) and then, as
a spawned one would, takes the test process's environment and working folder of the moment it
is started, and imports the module that defines `fn`.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

PRELOAD = ["torch", "torch.distributed", "numpy", "transformers",
           "transformers.models.qwen3.modeling_qwen3", "lightning", "lightning.pytorch",
           "peft", "f2llm.module", "f2llm.model", "f2llm.parallel", "f2llm.objective",
           "f2llm.data", "f2llm.export"]


def _as_started(rank: int, fn: Callable[..., Any], env: dict[str, str], cwd: str,
                *args: Any) -> None:
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    fn(rank, *args)


def start_ranks(fn: Callable[..., Any], args: tuple[Any, ...], nprocs: int,
                join: bool = True) -> mp.ProcessContext | None:
    """`fn(rank, *args)` in `nprocs` processes (as `torch.multiprocessing.start_processes`:
    join=True waits and raises a rank's exception; False returns the context)."""
    # Takes effect when the server starts: the first call in this process.
    multiprocessing.set_forkserver_preload(PRELOAD)
    return mp.start_processes(_as_started, args=(fn, dict(os.environ), os.getcwd(), *args),
                              nprocs=nprocs, join=join, start_method="forkserver")
