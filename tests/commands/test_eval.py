"""eval.py as a user types it scores a run's export as the run's own final validation did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli, run_folders, small_run


def test_final_validation_equals_eval_py_on_the_export(trained_repo: Path,
                                                        locale_dir: Path) -> None:
    """The run ends in stage 2 (instructions on) and validates once more after fit
    (`trainer.validate`, which sets the datamodule up again): its clustering and classification
    queries must still get the stage-2 instructions, as eval.py gives them from the export's
    prompts."""
    run = run_folders(trained_repo)[0]  # the fixture's; tests of other modules add later runs
    final = json.loads((run / "final_metrics.json").read_text())
    corpus = [a for a in small_run(locale_dir) if a.startswith("data.corpus.")]
    before = set(run_folders(trained_repo, "eval/runs/*"))
    done = run_cli(trained_repo, "eval", f"model_path={run / 'export'}", *corpus)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = set(run_folders(trained_repo, "eval/runs/*")) - before
    by_eval = json.loads((folder / "eval_metrics.json").read_text())["metrics"]
    for task in ("bitext", "retrieval", "clustering", "classification"):
        assert any(k.startswith(f"{task}/") for k in by_eval), task
    for key, value in by_eval.items():
        assert final[f"val/{key}"] == pytest.approx(value, abs=1e-4), key
