"""Where the project is: the root that `configs/paths/default.yaml` puts data/ and logs/ in."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def set_project_root(entry_point: str) -> Path:
    """Set `PROJECT_ROOT` to the checkout holding `entry_point` (`src/f2llm/<script>.py`).

    `paths.root_dir` reads it. The old fallback, `${hydra:runtime.cwd}`, is resolved in every
    case (OmegaConf resolves a resolver's default before the call) and cannot be resolved when
    a multirun makes its sweep folder, before any job has a HydraConfig. The
    lightning-hydra-template sets the same variable with `rootutils.setup_root`, found by an
    indicator file above the script; we take the folder above the `configs/` that the entry
    point's `config_path="../../configs"` reads, so data, logs and configs cannot come from two
    different checkouts, and a script run from another folder still writes into its own.
    Always set, never inherited: a caller's variable (a test process, another project) would
    otherwise send this checkout's runs elsewhere; `paths.root_dir=...` moves them on purpose."""
    root = Path(entry_point).resolve().parents[2]
    os.environ["PROJECT_ROOT"] = str(root)
    return root


def private_tmp(path: Path, tag: str = "") -> Path:
    """A temporary name next to `path` that no other writer uses (process and thread in the
    name), so that concurrent builders of one cache (two runs started at once, a multirun's
    jobs) each write their own file and the last `replace` wins, never one renaming another's
    half-written file away."""
    return path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}{tag}.tmp")
