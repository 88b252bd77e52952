"""Memory soak: run the default training for a while and check that its memory stays flat.

    python scripts/soak.py --minutes 30 [--warmup-minutes 5] [--window-minutes 10] \
        [--out DIR] [-- hydra overrides for train.py]

Starts `python src/f2llm/train.py` with a checkpoint every 50 steps, validation every 300 steps
and the last stage made long enough to outlast the soak (from the composed config, so any
`experiment=` works), samples the RSS of the training process and all its children every
`--interval` seconds, and stops the run with SIGINT (Lightning's graceful shutdown) after
`--minutes`. The mean RSS of the first window after the warm-up is compared with the mean of
the last window: PASS when the late mean is at most `--tolerance` (10 %) above the early one,
i.e. no leak; a drop passes. Writes into `--out` (default logs/soak/<UTC time>): rss.csv,
rss.png, train.log (the run's output), run/ (its run folder) and soak.md, a block for
docs/benchmarks.md that is also printed.

RSS is summed over the process tree, so pages shared between processes (memory-mapped corpus,
DDP ranks, data-loader workers) count once per process: compare soaks of the same setup.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import ROOT, exit_without_final_collection, machine

from f2llm.compose import compose_train

LONG_STAGE_STEPS = 1_000_000  # outlasts any soak; the cosine schedule needs a finite horizon
SOAK_OVERRIDES = ["callbacks.checkpoint.every_n_train_steps=50",
                  "trainer.val_check_interval=300", "trainer.check_val_every_n_epoch=null"]
MIB = 1024 * 1024


# ---- the command ------------------------------------------------------------------------------


def length_overrides(user: list[str]) -> list[str]:
    """Overrides that keep the composed run (with the user's overrides) going past the soak:
    its last stage gets `LONG_STAGE_STEPS` steps and `trainer.max_steps` the stages' sum."""
    plain = [o for o in user if not o.lstrip("+~").startswith("hydra.")]
    cfg = compose_train(plain)
    steps = [s.get("steps") for s in (cfg.data.get("stages") or [])]
    if steps and all(s is not None for s in steps):
        # Steps on every stage: the run ends with them (config_checks refuses a longer
        # max_steps), so the last stage is made long; earlier stages keep their switch points.
        return [f"data.stages.{len(steps) - 1}.steps={LONG_STAGE_STEPS}",
                f"trainer.max_steps={sum(steps[:-1]) + LONG_STAGE_STEPS}"]
    # Stages of one pass each: epochs repeat until max_steps.
    return [f"trainer.max_steps={LONG_STAGE_STEPS}", "trainer.max_epochs=-1"]


def train_command(out: Path, user: list[str]) -> list[str]:
    # The soak's settings first: the user's overrides come last and win.
    overrides = [*SOAK_OVERRIDES, *length_overrides(user), f"hydra.run.dir={out / 'run'}", *user]
    return [sys.executable, "src/f2llm/train.py", *overrides]


# ---- memory of a process tree -----------------------------------------------------------------


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _proc_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0  # gone, or a zombie (no VmRSS line)


def tree_rss(pid: int) -> tuple[int, int, int]:
    """(RSS of `pid` and all its descendants, RSS of `pid` alone, number of processes), bytes."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0, 0, 0
        sizes = []
        for p in procs:
            try:
                sizes.append(p.memory_info().rss)
            except psutil.NoSuchProcess:
                sizes.append(0)
        return sum(sizes), sizes[0], len(procs)
    children = _proc_children()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    sizes = [_proc_rss(p) for p in tree]
    return sum(sizes), sizes[0], len(tree)


def checkpoint_mtimes(folder: Path) -> dict[str, float]:
    try:
        return {p.name: p.stat().st_mtime for p in folder.glob("*.ckpt")}
    except OSError:
        return {}


# ---- the soak ---------------------------------------------------------------------------------


def stop(proc: subprocess.Popen, grace_s: float) -> str:
    """Stops the run's process group: SIGINT, then SIGTERM, then SIGKILL; says which worked.

    SIGINT goes twice, as a user presses Ctrl+C twice; Lightning ignores SIGINT once its
    shutdown has begun, so the second one cannot cut a shutdown short. (The run gets SIGINT's
    default disposition back in `soak`: started from a background job, it would inherit
    SIGINT ignored and only SIGTERM would stop it.)
    """
    steps = ((signal.SIGINT, grace_s), (signal.SIGINT, grace_s), (signal.SIGTERM, 30.0),
             (signal.SIGKILL, 30.0))
    for sig, wait in steps:
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            return f"stopped with {sig.name}, exit code {proc.returncode}"
        except subprocess.TimeoutExpired:
            continue
    return f"exit code {proc.returncode}"


def soak(command: list[str], out: Path, duration_s: float, interval_s: float,
         grace_s: float) -> dict[str, Any]:
    """Runs `command` for `duration_s`, writing one rss.csv row every `interval_s`."""
    checkpoints = out / "run" / "checkpoints"
    seen: dict[str, float] = {}
    writes = 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (out / "train.log").open("wb") as log, (out / "rss.csv").open("w", newline="") as fh:
        rows = csv.writer(fh)
        rows.writerow(["elapsed_s", "rss_mib", "main_rss_mib", "processes", "checkpoint_writes"])
        # A session of its own: the stop signal reaches every process of the run, and a Ctrl+C
        # on this script does not.
        # A shell starts background jobs with SIGINT ignored, and the run would inherit that
        # (Python then installs no KeyboardInterrupt handler): give it the default back.
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        start = time.monotonic()
        try:
            while True:
                elapsed = time.monotonic() - start
                if proc.poll() is not None or elapsed >= duration_s:
                    break
                total, main, count = tree_rss(proc.pid)
                now = checkpoint_mtimes(checkpoints)
                writes += sum(seen.get(name) != t for name, t in now.items())
                seen = now
                rows.writerow([f"{elapsed:.1f}", f"{total / MIB:.1f}", f"{main / MIB:.1f}", count,
                               writes])
                fh.flush()
                time.sleep(max(0.0, interval_s - (time.monotonic() - start - elapsed)))
        finally:
            ran = time.monotonic() - start
            early_exit = proc.poll()
            how = (f"training exited by itself with code {early_exit}" if early_exit is not None
                   else stop(proc, grace_s))
    return {"ran_s": ran, "stopped": how, "exited_early": early_exit is not None}


def read_csv(path: Path) -> tuple[list[float], list[float], list[int]]:
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    return ([float(r["elapsed_s"]) for r in rows], [float(r["rss_mib"]) for r in rows],
            [int(r["checkpoint_writes"]) for r in rows])


def analyse(times_s: list[float], rss: list[float], warmup_s: float, window_s: float,
            tolerance: float) -> dict[str, Any]:
    """Mean RSS of the first window after the warm-up vs. the last window, and the verdict.

    When the samples after the warm-up cover less than two windows, both windows shrink to half
    of what there is, so they never overlap.
    """
    if not times_s:
        raise ValueError("no RSS samples")
    end = times_s[-1]
    note = ""
    if end - warmup_s < 2 * window_s:
        window_s = (end - warmup_s) / 2
        note = f"windows shortened to {window_s / 60:.2f} min: the run was short"
    if window_s <= 0:
        raise ValueError(f"the run ({end:.0f} s) is not longer than the warm-up ({warmup_s:.0f} s)")
    early_span = (warmup_s, warmup_s + window_s)
    late_span = (end - window_s, end)
    early = [r for t, r in zip(times_s, rss, strict=True) if early_span[0] <= t < early_span[1]]
    late = [r for t, r in zip(times_s, rss, strict=True) if late_span[0] <= t <= late_span[1]]
    if not early or not late:
        raise ValueError("a window holds no samples: sample more often (--interval)")
    early_mean, late_mean = sum(early) / len(early), sum(late) / len(late)
    change = late_mean / early_mean - 1
    return {"early_mib": early_mean, "late_mib": late_mean, "change": change,
            "passed": change <= tolerance, "tolerance": tolerance, "early_span": early_span,
            "late_span": late_span, "early_samples": len(early), "late_samples": len(late),
            "peak_mib": max(rss), "note": note}


def plot(times_s: list[float], rss: list[float], result: dict[str, Any], warmup_s: float,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [t / 60 for t in times_s]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(minutes, rss, lw=1, label="RSS (process tree)")
    ax.axvspan(0, warmup_s / 60, color="grey", alpha=0.2, label="warm-up (excluded)")
    for key, color in (("early", "tab:green"), ("late", "tab:red")):
        a, b = result[f"{key}_span"]
        ax.hlines(result[f"{key}_mib"], a / 60, b / 60, colors=color, lw=2,
                  label=f"{key} mean {result[f'{key}_mib']:.0f} MiB")
    verdict = "PASS" if result["passed"] else "FAIL"
    ax.set_title(f"Memory soak: {result['change']:+.1%} ({verdict})")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _minutes(span: tuple[float, float]) -> str:
    return f"{span[0] / 60:.1f}–{span[1] / 60:.1f}"


def markdown(info: dict[str, Any], result: dict[str, Any]) -> str:
    verdict = "PASS" if result["passed"] else "FAIL"
    lines = [
        f"### Memory soak, {info['date']}",
        "",
        f"- Machine: {info['machine']}",
        f"- Soak: `{info['soak_command']}`",
        f"- Training: `{info['train_command']}`",
        f"- Ran {info['ran_s'] / 60:.1f} min ({info['stopped']}); RSS of the training process "
        f"tree every {info['interval']:g} s, {info['samples']} samples; warm-up of "
        f"{info['warmup_s'] / 60:g} min excluded; {info['checkpoint_writes']} checkpoint writes "
        f"seen",
        "",
        "| window | minutes | samples | mean RSS (MiB) |",
        "|---|---|---|---|",
        f"| early | {_minutes(result['early_span'])} | {result['early_samples']} | "
        f"{result['early_mib']:.0f} |",
        f"| late | {_minutes(result['late_span'])} | {result['late_samples']} | "
        f"{result['late_mib']:.0f} |",
        "",
        f"- Change late vs. early: {result['change']:+.1%} (limit +{result['tolerance']:.0%}): "
        f"**{verdict}**; peak {result['peak_mib']:.0f} MiB",
    ]
    if result["note"]:
        lines.append(f"- Note: {result['note']}")
    if info["exited_early"]:
        lines.append("- The training ended before the soak did: see train.log")
    lines.append(f"- Files: {info['out']}/rss.csv, rss.png, train.log")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    exit_without_final_collection()
    argv = list(sys.argv[1:] if argv is None else argv)
    user = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 usage="%(prog)s [options] [-- hydra overrides]")
    ap.add_argument("--minutes", type=float, default=30.0, help="how long the training runs")
    ap.add_argument("--warmup-minutes", type=float, default=5.0,
                    help="left out of the comparison (corpus build, first validation, caches)")
    ap.add_argument("--window-minutes", type=float, default=10.0,
                    help="length of the early and the late window")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--tolerance", type=float, default=0.10,
                    help="largest growth of the late mean over the early one that passes")
    ap.add_argument("--grace", type=float, default=120.0,
                    help="seconds the run gets to shut down after SIGINT")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default logs/soak/<UTC time>)")
    args = ap.parse_args(own)
    if args.minutes <= args.warmup_minutes:
        ap.error("--minutes must exceed --warmup-minutes")

    started = datetime.now(UTC)
    out = (args.out or ROOT / "logs" / "soak" / started.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = train_command(out, user)
    print(f"soak: {args.minutes:g} min of {shlex.join(command)}\n  -> {out}", flush=True)
    run = soak(command, out, args.minutes * 60, args.interval, args.grace)

    times_s, rss, writes = read_csv(out / "rss.csv")
    result = analyse(times_s, rss, args.warmup_minutes * 60, args.window_minutes * 60,
                     args.tolerance)
    plot(times_s, rss, result, args.warmup_minutes * 60, out / "rss.png")
    info = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "soak_command": shlex.join(["python", "scripts/soak.py", *argv]),
        "train_command": shlex.join(["python", *command[1:]]),
        "interval": args.interval,
        "samples": len(times_s),
        "warmup_s": args.warmup_minutes * 60,
        "checkpoint_writes": writes[-1] if writes else 0,
        "out": out,
        **run,
    }
    text = markdown(info, result)
    (out / "soak.md").write_text(text)
    print(text, flush=True)
    return 0 if result["passed"] and not run["exited_early"] else 1


if __name__ == "__main__":
    sys.exit(main())
