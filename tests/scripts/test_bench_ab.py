"""scripts/bench_ab.py at toy size (its numbers belong in docs/benchmarks.md, from the embedded
default), and the allocator setting it was written to measure."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from f2llm.train import keep_freed_host_memory
from tests.conftest import ROOT, tiny_overrides


def test_bench_ab_times_both_settings_in_alternating_processes(tmp_path: Path,
                                                               locale_dir: Path) -> None:
    own = ("trainer.max_steps=", "trainer.val_check_interval=", "callbacks.progress=",
           "trainer.enable_progress_bar=", "callbacks.checkpoint.")
    common = [o for o in tiny_overrides(tmp_path, locale_dir) if not o.startswith(own)]
    out = tmp_path / "ab.json"
    scratch = tmp_path / "tmp"  # the runs' temporary folders: removed when each run exits
    scratch.mkdir()
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench_ab.py"), "--a", "keep_freed_host_memory=false",
         # 2 steps, no warm-up: the fewest it takes (two step ends to time between; a child
         # that kept the default 20 warm-up steps would fail); 2 rounds: both orders.
         "--b", "keep_freed_host_memory=true", "--steps", "2", "--skip", "0", "--rounds", "2",
         "--a-src", str(ROOT),  # arm A from a checkout (this one): how two versions compare
         "--json", str(out), *common],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(scratch.glob("bench_ab_*"))
    result = json.loads(out.read_text())
    assert result["a_src"] == str(ROOT) and result["b_src"] == ""
    assert len(result["ms_per_step"]["A"]) == len(result["ms_per_step"]["B"]) == 2
    assert all(ms > 0 and math.isfinite(ms) for runs in result["ms_per_step"].values()
               for ms in runs)
    assert math.isclose(result["ratios"][1],
                        result["ms_per_step"]["B"][1] / result["ms_per_step"]["A"][1])
    assert "round 1: B (keep_freed_host_memory=true)" in done.stdout  # B first in odd rounds
    assert done.stdout.index("round 1: B") < done.stdout.index("round 1: A")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_host_memory_is_taken_by_glibc() -> None:
    assert keep_freed_host_memory() is True
