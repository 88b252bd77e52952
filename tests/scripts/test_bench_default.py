"""scripts/bench_default.py at toy size (its numbers belong in docs/benchmarks.md, from the embedded
default): both models train alike, and every part of the step is timed."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from tests.conftest import ROOT, run_python, tiny_overrides, user_env


def test_bench_default_times_full_and_trimmed_vocabulary(tmp_path: Path,
                                                         locale_dir: Path) -> None:
    out = tmp_path / "bd.json"
    done = run_python(
        [sys.executable, str(ROOT / "scripts/bench_default.py"), "--steps", "2", "--skip", "1",
         "--json", str(out), *tiny_overrides(tmp_path, locale_dir)], ROOT, user_env(), 600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    # --keep 0: the rows of the tokens in the (tiny) training data, far below the vocabulary.
    assert 0 < result["rows_trained"]["B"] < result["rows_trained"]["A"] == 151_936
    assert result["max_loss_difference"] < 1e-4  # step 2's losses: after an optimizer step
    for timings in (result["wall_ms_median"], result["cpu_ms_median"]):
        assert all(ms >= 0 and math.isfinite(ms) for parts in timings.values()
                   for ms in parts.values())
    assert "| optimizer |" in done.stdout
