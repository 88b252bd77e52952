"""scripts/bench_shard_memory.py at toy size (its numbers belong in docs/benchmarks.md, from
`model=f2llm_1_7b`): both ways build, shard and fill the same model over two gloo ranks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import ROOT, run_python, user_env


def test_bench_shard_memory_at_toy_size(tmp_path: Path) -> None:
    out = tmp_path / "shard.json"
    done = run_python([sys.executable, "scripts/bench_shard_memory.py", "--model", "tiny",
                       "--json", str(out)], ROOT, user_env(), 300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    for way in ("whole", "empty"):
        ranks = [r for r in report["rows"] if r["way"] == way]
        assert sorted(r["rank"] for r in ranks) == [0, 1]
        # Each rank holds its own rows of every parameter; together, the whole model.
        (total,) = {r["parameters"] for r in ranks}
        assert sum(r["local_parameters"] for r in ranks) == total
        assert all(r["peak_mib"] >= r["baseline_mib"] > 0 for r in ranks)
    assert report["ratio"] == report["peak_mib"]["empty"] / report["peak_mib"]["whole"]
