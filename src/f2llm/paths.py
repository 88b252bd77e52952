"""Paths that several writers share safely."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def private_tmp(path: Path, tag: str = "") -> Path:
    """A temporary name next to `path` that no other writer uses (process and thread in the
    name), so that concurrent builders of one cache (two runs started at once, a multirun's
    jobs) each write their own file and the last `replace` wins, never one renaming another's
    half-written file away."""
    return path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}{tag}.tmp")
