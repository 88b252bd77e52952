"""The processes of a run: what each further rank of a Hydra multirun job runs.

Lightning's default launcher (`_SubprocessScriptLauncher`: DDP's default `popen` start, FSDP,
FSDP2) starts ranks 1..N-1 of a node by running this process's command line again, `sys.argv`,
with `hydra.run.dir="<hydra.run.dir>"`, `hydra.job.name=train_ddp_process_<rank>` and
`hydra.output_subdir=null` appended (`_hydra_subprocess_cmd` in
lightning/fabric/strategies/launchers/subprocess_script.py, Lightning 2.6). In a multirun job that
command is the whole sweep (`-m` and every swept value) and `hydra.run.dir` is not the job's
folder, so every rank would start a sweep of its own, write into another folder, and join
whichever job of its own sweep meets the first rank's port. `multirun_job_ranks` makes the
command this job alone, as a single run in the job's folder.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write

# Hydra's options that choose the primary config (a rank must compose the same one).
_CONFIG_OPTIONS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


def rank_arguments(argv: Sequence[str], hydra_overrides: Sequence[str],
                   task_overrides: Sequence[str]) -> list[str]:
    """The arguments that run one job of a multirun as a single run: the config options of
    `argv` (the sweep's arguments, `sys.argv[1:]`), the job's Hydra and task overrides, and
    `hydra.mode=RUN` (a config may set `hydra.mode: MULTIRUN`, as `hparams_search` does)."""
    kept: list[str] = []
    for i, arg in enumerate(argv):
        if arg.split("=", 1)[0] in _CONFIG_OPTIONS:
            kept.extend(argv[i:i + 1] if "=" in arg else argv[i:i + 2])
    hydra = [o for o in hydra_overrides if not o.startswith("hydra.mode=")]
    return [*kept, *hydra, *task_overrides, "hydra.mode=RUN"]


@contextmanager
def multirun_job_ranks() -> Iterator[None]:
    """In a Hydra multirun job: the ranks Lightning starts run this job, in its folder; on
    exit the process group and the environment the launcher set are undone, so the sweep's
    next job in this process starts ranks of its own (Lightning starts none while `LOCAL_RANK`
    is set, and reuses an initialised group). Outside a multirun: nothing."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hydra_cfg = HydraConfig.get()
    argv, environ = list(sys.argv), dict(os.environ)
    sys.argv[1:] = rank_arguments(sys.argv[1:], hydra_cfg.overrides.hydra,
                                  hydra_cfg.overrides.task)
    # Hydra discards this job's HydraConfig when the job ends: nothing to put back.
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)
        sys.argv[:] = argv
