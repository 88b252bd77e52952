"""scripts/bench_layer_pruning.py at toy size (its numbers belong in docs/benchmarks.md, from the
embedded default): both arms train, and each trained encoder is scored uncut and cut."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, small_run, user_env


def test_bench_layer_pruning_scores_both_arms_before_and_after_the_cut(
        tmp_path: Path, locale_dir: Path) -> None:
    own = ("trainer.max_steps=", "trainer.val_check_interval=", "trainer.enable_progress_bar=",
           "model.shape.num_hidden_layers=")  # the script's own (--steps, --depth)
    common = [o for o in small_run(locale_dir) if not o.startswith(own)]
    common.append(f"paths.data_dir={tmp_path / 'data'}")  # data, not in the repository
    # The gettext corpus of the tests' slice, built once for the test run (as tiny_overrides
    # shares it), not once more here.
    common.append(f"data.corpus.out_dir={locale_dir.parent / f'{locale_dir.name}_gettext'}")
    out = tmp_path / "layers.json"
    scratch = tmp_path / "tmp"  # the runs' temporary folders: removed when the script exits
    scratch.mkdir()
    done = subprocess.run(
        [sys.executable, "scripts/bench_layer_pruning.py", "--steps", "2", "--depth", "2",
         "--keep", "1", "--layers", "1", "--json", str(out), "--", *common],
        cwd=ROOT, env=user_env(TMPDIR=str(scratch)), capture_output=True, text=True,
        timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(scratch.glob("bench_layer_pruning_*"))
    runs = json.loads(out.read_text())["runs"]
    assert list(runs) == ["without layers, seed 42", "layers [1], seed 42"]
    for rows in runs.values():
        assert list(rows) == ["unpruned", "pruned to 1, first_k", "pruned to 1, activation"]
        for metrics in rows.values():
            assert 0 <= metrics["bitext/accuracy@32"] <= 1
    # The layer loss changes the training: the two arms' trained encoders differ.
    assert runs["without layers, seed 42"]["unpruned"] != runs["layers [1], seed 42"]["unpruned"]
    assert "| without layers, seed 42 | pruned to 1, first_k |" in done.stdout
