"""Step time of the default training under two settings, in alternating fresh processes.

    python scripts/bench_ab.py --a keep_freed_host_memory=false --b keep_freed_host_memory=true \
        [--steps 150] [--rounds 3] [--json out.json] [-- common overrides ...]

Each run is `f2llm.train.train` on the composed config (the embedded default unless the common
overrides say otherwise) for `--steps` stage-1 steps with no validation, checkpoints, export or
loggers, in a process of its own (some settings, like the C library's allocator, cannot be undone
within a process). Rounds alternate the order (A then B, B then A, ...) so that the machine's
drift cancels. Time per step is taken from the end of step 20 to the end of the last step.
Prints each run's ms/step and the median of the per-round ratios B / A.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SKIP = 20  # warm-up steps left out of the timing


def run_overrides(steps: int) -> list[str]:
    return [f"trainer.max_steps={steps}", f"data.stages.0.steps={steps}",
            f"trainer.val_check_interval={steps + 1}", "final_validate=false",
            "callbacks.matryoshka_eval=null", "callbacks.export=null",
            "callbacks.checkpoint=null", "callbacks.progress=null", "callbacks.lr_monitor=null",
            "trainer.enable_progress_bar=false", "~logger"]


def child(overrides: list[str]) -> None:
    """One timed run in this process; prints {"ms_per_step": ...} as the last line."""
    import lightning as L
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import f2llm.train as entry

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        out = tempfile.mkdtemp(prefix="bench_ab_")
        cfg = compose("train", overrides=[f"paths.root_dir={ROOT}", f"paths.output_dir={out}",
                                          *overrides])
    with open_dict(cfg):
        cfg.pop("hydra", None)
    ends: list[float] = []

    class StepEnds(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            ends.append(time.perf_counter())

    entry.train(cfg, callbacks=[StepEnds()])
    timed = ends[SKIP:]
    print(json.dumps({"ms_per_step": 1000 * (timed[-1] - timed[0]) / (len(timed) - 1)}))


def timed_run(setting: str, common: list[str], steps: int) -> float:
    done = subprocess.run(
        [sys.executable, __file__, "--child", *run_overrides(steps), *common, setting],
        capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"run with {setting} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["ms_per_step"]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="override of setting A (the baseline)")
    ap.add_argument("--b", required=True, help="override of setting B")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("common", nargs="*", help="overrides for every run")
    args = ap.parse_args()
    if args.steps <= SKIP + 1:
        ap.error(f"--steps must be above {SKIP + 1}: the first {SKIP} steps are warm-up")
    ms: dict[str, list[float]] = {"A": [], "B": []}
    for r in range(args.rounds):
        for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
            setting = args.a if name == "A" else args.b
            ms[name].append(timed_run(setting, args.common, args.steps))
            print(f"round {r}: {name} ({setting}) {ms[name][-1]:.1f} ms/step", flush=True)
    ratios = [b / a for a, b in zip(ms["A"], ms["B"], strict=True)]
    result = {"date": datetime.now(UTC).isoformat(timespec="minutes"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "a": args.a, "b": args.b, "common": args.common, "steps": args.steps,
              "ms_per_step": ms, "ratios": ratios, "median_ratio": statistics.median(ratios)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(f"\n| round | A: {args.a} | B: {args.b} | B / A |\n|---|---|---|---|")
    for r, ratio in enumerate(ratios):
        print(f"| {r} | {ms['A'][r]:.1f} | {ms['B'][r]:.1f} | {ratio:.3f}x |")
    print(f"\nmedian B / A: {result['median_ratio']:.3f}x")


if __name__ == "__main__":
    main()
