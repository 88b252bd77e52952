"""scripts/soak.py: its analysis and process-tree RSS, and one toy-size soak end to end (its
numbers belong in docs/benchmarks.md, from a 30-minute soak)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, load_script, tiny_overrides


def load_soak():
    return load_script("soak")


soak = load_soak()


def test_analysis_compares_the_windows_after_the_warm_up() -> None:
    times = [float(t) for t in range(0, 1800, 5)]
    # A warm-up spike, then flat with noise: passes, the spike left out.
    flat = [5000.0 if t < 300 else 1000.0 + (t % 20) for t in times]
    result = soak.analyse(times, flat, warmup_s=300, window_s=600, tolerance=0.1)
    assert result["passed"] and abs(result["change"]) < 0.01
    assert result["early_span"] == (300, 900) and result["late_span"] == (1795.0 - 600, 1795.0)
    assert result["peak_mib"] == 5000.0 and not result["note"]
    # A steady leak of 40 % over the run (+14 % between the windows) fails; a drop passes.
    leak = [1000.0 * (1 + 0.4 * t / 1800) for t in times]
    assert not soak.analyse(times, leak, 300, 600, 0.1)["passed"]
    drop = [1000.0 if t < 900 else 700.0 for t in times]
    assert soak.analyse(times, drop, 300, 600, 0.1)["passed"]
    # Too short for two windows: they shrink and do not overlap.
    short = soak.analyse(times[:60], flat[:60], 60, 600, 0.1)
    assert short["note"] and short["early_span"][1] <= short["late_span"][0]


def test_tree_rss_counts_the_children() -> None:
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])"
        " for _ in range(2)]\n"
        "time.sleep(30)\n")])
    try:
        for _ in range(100):
            total, main, count = soak.tree_rss(parent.pid)
            if count == 3:
                break
            time.sleep(0.1)
        assert count == 3
        assert total > 2 * main > 0  # each child is a Python interpreter too
    finally:
        for pid in soak._proc_children().get(parent.pid, []):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
    assert soak.tree_rss(parent.pid) == (0, 0, 0)


def test_soak_at_toy_size(tmp_path: Path, locale_dir: Path) -> None:
    # The soak sets these itself; the run folder goes into the soak's output folder.
    own = ("trainer.max_steps=", "trainer.val_check_interval=", "paths.output_dir=",
           "callbacks.checkpoint.every_n_train_steps=")
    overrides = [o for o in tiny_overrides(tmp_path, locale_dir) if not o.startswith(own)]
    # A checkpoint every 20 steps instead of the soak's 50, as a user's override (they come
    # last and win): the first write comes about a second after the first step, so a soak of
    # seconds sees writes however slowly the run starts on a loaded machine.
    overrides.append("callbacks.checkpoint.every_n_train_steps=20")
    out = tmp_path / "soak"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    # Started with SIGINT ignored, as a shell starts a background job (`soak.py ... &`): the
    # soak must still stop its run with SIGINT. 18 s: some 72 samples 0.25 s apart (40 are
    # asserted); the run's first checkpoint write comes about 9 s in (mostly its imports).
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/soak.py"), "--minutes", "0.3", "--warmup-minutes",
         "0.1", "--window-minutes", "0.1", "--interval", "0.25", "--grace", "90", "--out",
         str(out), "--", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    # No verdict asserted: seconds of a toy run say nothing about leaks.
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    with (out / "rss.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) >= 40 and all(float(r["rss_mib"]) > 0 for r in rows)
    assert int(rows[-1]["checkpoint_writes"]) >= 1  # it trained, and the soak saw the writes
    assert (out / "rss.png").stat().st_size > 0
    report = (out / "soak.md").read_text()
    assert "stopped with SIGINT" in report, (out / "train.log").read_text()[-3000:]
    assert "| early |" in report and "| late |" in report
    assert ("**PASS**" in report) == (done.returncode == 0)
    assert report in done.stdout
    run_overrides = (out / "run" / ".hydra" / "overrides.yaml").read_text()
    assert "callbacks.checkpoint.every_n_train_steps=50" in run_overrides  # the soak's own
