"""scripts/bench_loader.py: its padding arithmetic, and a toy-size run end to end (its numbers
belong in docs/benchmarks.md, from the embedded default)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from f2llm.data.batch import TrainBatch
from tests.conftest import ROOT, load_script, run_python, tiny_overrides, user_env


def chunk(lengths: list[int]) -> dict[str, torch.Tensor]:
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return {"attention_mask": mask}


def test_padding_fractions_packed_vs_padded_to_the_longest() -> None:
    bench = load_script("bench_loader")
    # One batch, texts of 1, 2 and 5 tokens packed as [1, 2] and [5]: 1 pad token of 9.
    # Padded to the longest (5): 4 + 3 = 7 pad tokens of 15.
    batch = TrainBatch([chunk([1, 2]), chunk([5])], torch.arange(3), batch_size=1,
                       num_negatives=1, use_inbatch=True, format="retrieval", dataset="toy",
                       language="xx", group="toy/xx", indices=np.arange(1), stage="s", epoch=0,
                       position=0, num_tokens=8, num_padding=1)
    packed, longest = bench.padding_fractions([batch])
    assert abs(packed - 1 / 9) < 1e-12 and abs(longest - 7 / 15) < 1e-12


def test_bench_loader_at_toy_size(tmp_path: Path, locale_dir: Path) -> None:
    own = ("trainer.max_steps=", "trainer.val_check_interval=")
    overrides = [o for o in tiny_overrides(tmp_path, locale_dir) if not o.startswith(own)]
    out = tmp_path / "loader.json"
    done = run_python(
        [
            sys.executable,
            str(ROOT / "scripts/bench_loader.py"),
            "--batches",
            "4",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--json",
            str(out),
            *overrides,
        ],
        ROOT,
        user_env(),
        300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["loader_ms_per_batch"] > 0 and result["step_ms"] > 0
    assert 0 <= result["padding_packed"] <= result["padding_longest"] < 1
    assert result["formats"] == ["retrieval"]  # stage 1 of the default: bitext only
    assert "| loader speed / model speed |" in done.stdout
