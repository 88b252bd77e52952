"""scripts/benchmark.py runs end to end at toy size (its numbers belong in docs/benchmarks.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import ROOT, run_python, tiny_overrides, user_env


def test_benchmark_at_toy_size(tmp_path: Path, locale_dir: Path) -> None:
    out = tmp_path / "benchmark.json"
    overrides = tiny_overrides(tmp_path, locale_dir, **{"data.batch_size": 16})
    # One thread (conftest's OMP_NUM_THREADS): on shared CPU cores, OpenMP threads waiting for
    # descheduled peers make each step tens of times slower, and no timing is asserted here.
    done = run_python(
        # GradCache at batch 128, twice the plain run's 64 (the documented run's 2048 takes
        # seconds more here and shows nothing more).
        [sys.executable, str(ROOT / "scripts/benchmark.py"), "--steps", "3", "--warmup", "1",
         "--gradcache-batch", "128", "--peak-n", "512", "--json", str(out), *overrides],
        ROOT, user_env(), 300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    for trainer in ("f2llm", "st"):
        numbers = result[trainer]
        assert numbers["steps"] == 3
        for key in ("samples_per_s", "tokens_per_s", "peak_memory_mib", "flops_per_s", "mfu"):
            assert numbers[key] > 0, (trainer, key)
        assert 0 <= numbers["padding_fraction"] < 1
    # The same texts went through both: the same real tokens.
    assert result["st"]["tokens"] == result["f2llm"]["tokens"]
    assert result["ratio_samples_per_s"] > 0
    assert result["gradcache"]["batch"] == {"plain": 64, "gradcache": 128}
    assert result["gradcache"]["gradcache"]["mean_batch_size"] == 128
    assert result["gradcache"]["plain"]["mean_batch_size"] == 64
    assert result["gradcache"]["memory_ratio"] > 0
    assert result["peak"]["flops_per_s"] > 0 and result["peak"]["n"] == 512
    assert "| f2llm |" in done.stdout and "f2llm / sentence-transformers" in done.stdout
    assert "GradCache batch 128 / plain batch 64 peak memory" in done.stdout
