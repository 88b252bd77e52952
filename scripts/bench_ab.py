"""Step time of the default training under two settings, in alternating fresh processes.

    python scripts/bench_ab.py --a keep_freed_host_memory=false --b keep_freed_host_memory=true \
        [--steps 150] [--skip 20] [--rounds 3] [--json out.json] [-- common overrides ...]
    python scripts/bench_ab.py --a-src <other checkout> [...]   # two versions of the code

`--a-src` / `--b-src`: run that arm with another checkout of the project (its code and its
configs, e.g. `git worktree add /tmp/before <commit>`), to compare two versions; `--a` / `--b`
then default to no override.

Each run is `f2llm.train.train` on the composed config (the embedded default unless the common
overrides say otherwise) for `--steps` stage-1 steps with no validation, checkpoints, export or
loggers, in a process of its own (some settings, like the C library's allocator, cannot be undone
within a process). Rounds alternate the order (A then B, B then A, ...) so that the machine's
drift cancels. Time per step is taken from the end of step `--skip` (20) to the end of the last
step.
Prints each run's ms/step and the median of the per-round ratios B / A.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from _common import (
    TRAINING_STEPS_ONLY,
    alternating_rounds,
    exit_without_final_collection,
    machine,
    scratch_dir,
)

from f2llm.compose import compose_train

SKIP = 20  # warm-up steps left out of the timing (`--skip`)


def run_overrides(steps: int) -> list[str]:
    return [f"trainer.max_steps={steps}", f"data.stages.0.steps={steps}",
            f"trainer.val_check_interval={steps + 1}", *TRAINING_STEPS_ONLY]


def child(overrides: list[str], skip: int) -> None:
    """One timed run in this process; prints {"ms_per_step": ...} as the last line."""
    from _step_timer import StepTimer  # Lightning: here only, the rounds' process never trains

    import f2llm.train as entry

    cfg = compose_train(overrides, scratch_dir("bench_ab_"))
    timer = StepTimer()
    entry.train(cfg, callbacks=[timer])
    print(json.dumps({"ms_per_step": timer.ms_per_step(skip)}))


def timed_run(setting: str, common: list[str], steps: int, skip: int,
              src: Path | None = None) -> float:
    """One run in a fresh process: this checkout's code, or the checkout `src`'s (its own
    copy of this script, its `src/` first on the path)."""
    script, env = Path(__file__), dict(os.environ)
    if src is not None:
        script = src / "scripts" / "bench_ab.py"
        env["PYTHONPATH"] = os.pathsep.join([str(src / "src"), env.get("PYTHONPATH", "")])
    # `--skip` only when it is not the default: a checkout from before the option has SKIP.
    done = subprocess.run(
        [sys.executable, str(script), "--child", *([f"--skip={skip}"] if skip != SKIP else []),
         *run_overrides(steps), *common,
         *([setting] if setting else [])],
        capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"run with {setting} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["ms_per_step"]


def main() -> None:
    exit_without_final_collection()
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        skip = sys.argv[2].startswith("--skip=")
        child(sys.argv[2 + skip:], int(sys.argv[2].removeprefix("--skip=")) if skip else SKIP)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", default="", help="override of setting A (the baseline)")
    ap.add_argument("--b", default="", help="override of setting B")
    ap.add_argument("--a-src", type=Path, default=None, help="checkout that runs A")
    ap.add_argument("--b-src", type=Path, default=None, help="checkout that runs B")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--skip", type=int, default=SKIP, help="warm-up steps left out of the timing")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("common", nargs="*", help="overrides for every run")
    args = ap.parse_args()
    if args.skip < 0 or args.steps <= args.skip + 1:
        ap.error(f"--steps must be above --skip + 1 ({args.skip + 1}): the first {args.skip} "
                 "steps are warm-up")
    if not (args.a or args.b or args.a_src or args.b_src):
        ap.error("give the settings (--a/--b) or the checkouts (--a-src/--b-src) to compare")
    settings = {"A": args.a, "B": args.b}
    sources = {"A": args.a_src, "B": args.b_src}
    settings = {name: setting or (f"code of {sources[name]}" if sources[name] else "")
                for name, setting in settings.items()}
    ms = alternating_rounds(
        {name: (lambda n=name: timed_run(
            args.a if n == "A" else args.b, args.common, args.steps, args.skip, sources[n]))
         for name in settings}, args.rounds,
        lambda r, name, ms: print(f"round {r}: {name} ({settings[name]}) {ms[name][-1]:.1f} "
                                  "ms/step", flush=True))
    ratios = [b / a for a, b in zip(ms["A"], ms["B"], strict=True)]
    result = {"date": datetime.now(UTC).isoformat(timespec="minutes"),
              "machine": machine(), "a_src": str(args.a_src or ""), "b_src": str(args.b_src or ""),
              "a": args.a, "b": args.b, "common": args.common, "steps": args.steps,
              "skip": args.skip,
              "ms_per_step": ms, "ratios": ratios, "median_ratio": statistics.median(ratios)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    names = {n: settings[n] or "this checkout" for n in settings}
    print(f"\n| round | A: {names['A']} | B: {names['B']} | B / A |\n|---|---|---|---|")
    for r, ratio in enumerate(ratios):
        print(f"| {r} | {ms['A'][r]:.1f} | {ms['B'][r]:.1f} | {ratio:.3f}x |")
    print(f"\nmedian B / A: {result['median_ratio']:.3f}x")


if __name__ == "__main__":
    main()
