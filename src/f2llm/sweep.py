"""What each job of a Hydra multirun returned, in one file per sweep."""

from __future__ import annotations

import fcntl
import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

log = logging.getLogger("f2llm.sweep")


class SweepResults(Callback):
    """Append `{"job", "overrides", <optimized_metric>: value}` to `<sweep dir>/results.jsonl`
    as each job of a multirun ends, in the order they end (a submitit launcher runs them at
    once), from the job's global rank zero. The value is what `train.py` returns to the
    sweeper; Optuna also writes its own `optimization_results.yaml`. Failed jobs are left to
    their own message."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra_cfg = config.hydra
        if hydra_cfg.mode != RunMode.MULTIRUN or job_return.status != JobStatus.COMPLETED:
            return
        if rank_zero_only.rank != 0:
            return  # a job of several SLURM tasks runs every task through these callbacks
        metric = config.get("optimized_metric") or "return_value"
        row = {"job": hydra_cfg.job.num, "overrides": list(job_return.overrides or []),
               metric: job_return.return_value}
        log.info("job %s (%s): %s = %s", row["job"], " ".join(row["overrides"]), metric,
                 job_return.return_value)
        out = Path(hydra_cfg.sweep.dir) / "results.jsonl"
        with out.open("a") as f:
            # Under a submitit launcher each job appends from its own process, under SLURM from
            # its own node, where appends to a shared filesystem (NFS) can overwrite each other.
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(json.dumps(row) + "\n")
