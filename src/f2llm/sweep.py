"""What each job of a Hydra multirun returned, in one file per sweep."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger("f2llm.sweep")


class SweepResults(Callback):
    """Append `{"job", "overrides", <optimized_metric>: value}` to `<sweep dir>/results.jsonl`
    as each job of a multirun ends (the value `train.py` returns to the sweeper; Optuna also
    writes its own `optimization_results.yaml`). Failed jobs are left to their own message."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra_cfg = config.hydra
        if hydra_cfg.mode != RunMode.MULTIRUN or job_return.status != JobStatus.COMPLETED:
            return
        metric = config.get("optimized_metric") or "return_value"
        row = {"job": hydra_cfg.job.num, "overrides": list(job_return.overrides or []),
               metric: job_return.return_value}
        log.info("job %s (%s): %s = %s", row["job"], " ".join(row["overrides"]), metric,
                 job_return.return_value)
        out = Path(hydra_cfg.sweep.dir) / "results.jsonl"
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
