"""scripts/screen_default.py at toy size: every arm and seed runs as `train.py` with the arm's
overrides, and the table and JSON hold each run's own final metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT, run_python, small_run, user_env


def test_screen_runs_each_arm_and_seed_and_reports_its_metrics(tmp_path: Path,
                                                               locale_dir: Path) -> None:
    own = ("trainer.max_steps=", "trainer.val_check_interval=", "trainer.enable_progress_bar=")
    common = [o for o in small_run(locale_dir) if not o.startswith(own)]
    common.append(f"paths.data_dir={tmp_path / 'data'}")  # data, not in the repository
    # The gettext corpus of the tests' slice, built once for the test run (as tiny_overrides
    # shares it), not once more here.
    common.append(f"data.corpus.out_dir={locale_dir.parent / f'{locale_dir.name}_gettext'}")
    out = tmp_path / "screen"
    done = run_python(
        [sys.executable, "scripts/screen_default.py", "--arms", "base", "batch384_same_texts",
         "--seeds", "1", "2", "--steps", "1", "--jobs", "2", "--out", str(out),
         "--json", str(tmp_path / "screen.json"), "--", *common],
        ROOT, user_env(), 600)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    results = json.loads((tmp_path / "screen.json").read_text())["results"]
    assert set(results) == {"base", "batch384_same_texts"}
    for name, by_seed in results.items():
        assert set(by_seed) == {"1", "2"}
        for seed, r in by_seed.items():
            folder = Path(r["folder"])
            assert folder.is_relative_to(out)  # nothing in the repository's logs/
            overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
            assert f"seed={seed}" in overrides
            # The arm's own overrides and its share of proxy steps (1 x 2.0 for batch 384).
            steps = 2 if name == "batch384_same_texts" else 1
            assert f"trainer.max_steps={steps}" in overrides and r["steps"] == steps
            assert ("data.batch_size=384" in overrides) == (name == "batch384_same_texts")
            # Both arms start from the default before the screen, whatever is shipped now.
            assert {"model.attention=causal", "module.embedding_lr_scale=1.0"} <= set(overrides)
            final = json.loads((folder / "final_metrics.json").read_text())
            width = max(int(k.rsplit("@", 1)[1]) for k in final
                        if k.startswith("val/bitext/accuracy@"))
            assert r["scores"]["bitext@128"] == final[f"val/bitext/accuracy@{width}"]
            assert r["scores"]["nDCG@10@128"] == final[f"val/retrieval/ndcg_at_10@{width}"]
            line = f"| {name} | {seed} | {r['scores']['bitext@128']:.4f} |"
            assert line in done.stdout
    # Two seeds: the mean row.
    base = [results["base"][s]["scores"]["bitext@128"] for s in ("1", "2")]
    assert f"| base | mean | **{sum(base) / 2:.4f}** |" in done.stdout
