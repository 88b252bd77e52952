"""Two processes (the ranks of a run, or two runs on one machine) build one F2LLM-v2 corpus at
once: one builds, the other waits on the build lock and reuses what it built (the recipe in one
process: tests/unit/test_f2llm_v2.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from f2llm.data.sources.f2llm_v2 import EXAMPLE_NAMES, write_synthetic


def test_concurrent_builders_wait_for_one_build(tmp_path: Path) -> None:
    root = write_synthetic(tmp_path / "raw", "raw", list(EXAMPLE_NAMES), 200)
    code = ("import sys, logging; logging.basicConfig(level=logging.INFO);"
            "from f2llm.data import build_f2llm_v2_corpus;"
            "build_f2llm_v2_corpus(sys.argv[1], sys.argv[2])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root), str(tmp_path / "out")],
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    assert sum("built the F2LLM-v2 corpus" in log for log in logs) == 1
    assert sum("reusing the F2LLM-v2 corpus" in log for log in logs) == 1
