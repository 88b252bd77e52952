"""Screen settings of the embedded default: short proxy runs, then full-length confirmation.

    python scripts/screen_default.py [--arms base bimean ...] [--seeds 42 43 ...] \
        [--steps 400] [--full] [--jobs 2] [--out logs/screen] [--json out.json] [-- overrides]

Each arm (`ARMS`: a name, its overrides, and how many proxy steps it gets relative to
`--steps`) runs once per seed as `python src/f2llm/train.py <arm overrides> <overrides>`, in a
subprocess of its own, `--jobs` at a time with one torch thread each (two single-thread runs
use two cores better than one two-thread run of these small matmuls, and runs side by side
share the machine's load alike). Without `--full` a run is one stage 1 of `--steps` steps on
gettext bitext without instructions (the proxy); with `--full` it is the default as shipped,
both stages. Scores come from each run's `final_metrics.json`: held-out bitext accuracy,
retrieval nDCG@10, clustering V-measure and classification accuracy at full width (and
bitext at dim 8), with the run's wall time and training samples/s. Prints a markdown table
(per seed, then the mean over seeds); `--json` writes every run's numbers. A run's scores do
not depend on the load (CPU training here is deterministic); its wall time does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from _common import ROOT, exit_without_final_collection, machine

# The default before the screen (causal attention, last-token pooling, one lr): every arm but
# "default" starts from it, so the table reads the same whichever default is shipped.
PREVIOUS = ["model.attention=causal", "model.pooling=last", "module.embedding_lr_scale=1.0"]
BIDIRECTIONAL_MEAN = ["model.attention=bidirectional", "model.pooling=mean"]


@dataclass(frozen=True)
class Arm:
    overrides: list[str] = field(default_factory=list)
    # Proxy steps relative to --steps: an arm whose step costs less or more runs for about the
    # same time (e.g. batch 384 at 1.75x the steps of batch 768 took the same wall time here).
    steps_factor: float = 1.0


def previous(*changes: str, steps_factor: float = 1.0) -> Arm:
    return Arm([*PREVIOUS, *changes], steps_factor)


# The screen of the embedded default (docs/benchmarks.md, "How the default was chosen").
ARMS: dict[str, Arm] = {
    "default": Arm(),  # what configs/experiment/gettext_tiny.yaml ships
    "base": previous(),
    "lr1e-3": previous("optimizer.lr=1e-3"),
    "lr4e-3": previous("optimizer.lr=4e-3"),
    "lr8e-3": previous("optimizer.lr=8e-3"),
    "tau0.02": previous("objective.tau=0.02"),
    "tau0.1": previous("objective.tau=0.1"),
    "margin0.1": previous("objective.false_negative_margin=0.1"),
    "bidirectional_mean": previous(*BIDIRECTIONAL_MEAN),
    "max_length32": previous("model.max_length=32"),
    "width256": previous("model.shape.hidden_size=256", "model.shape.num_attention_heads=4",
                         "model.shape.num_key_value_heads=2",
                         "model.shape.intermediate_size=512"),
    "depth2_bidirectional_mean": previous("model.shape.num_hidden_layers=2",
                                          *BIDIRECTIONAL_MEAN),
    "batch384_same_texts": previous("data.batch_size=384", steps_factor=2.0),
    "batch384_bidirectional_mean_same_texts": previous("data.batch_size=384",
                                                       *BIDIRECTIONAL_MEAN, steps_factor=2.0),
    "batch256_same_texts": previous("data.batch_size=256", steps_factor=3.0),
    "batch384_bidirectional_mean_same_time": previous("data.batch_size=384",
                                                      *BIDIRECTIONAL_MEAN, steps_factor=1.75),
    "batch256_bidirectional_mean_same_time": previous("data.batch_size=256",
                                                      *BIDIRECTIONAL_MEAN, steps_factor=2.25),
    "embedding_lr4": previous("module.embedding_lr_scale=4"),
    "embedding_lr10": previous("module.embedding_lr_scale=10"),
    "embedding_lr2_bidirectional_mean": previous("module.embedding_lr_scale=2",
                                                 *BIDIRECTIONAL_MEAN),
    "embedding_lr4_bidirectional_mean": previous("module.embedding_lr_scale=4",
                                                 *BIDIRECTIONAL_MEAN),
    # How the default's 1,600 steps split between the stages (shipped: 1,300 + 300); from the
    # shipped default, meant for --full.
    "split1100_500": Arm(["data.stages.0.steps=1100", "data.stages.1.steps=500"]),
    "split1450_150": Arm(["data.stages.0.steps=1450", "data.stages.1.steps=150"]),
}

SCORES = {
    "bitext@128": "val/bitext/accuracy@{width}",
    "nDCG@10@128": "val/retrieval/ndcg_at_10@{width}",
    "clustering@128": "val/clustering/v_measure@{width}",
    "classification@128": "val/classification/accuracy@{width}",
    "bitext@8": "val/bitext/accuracy@8",
}


def proxy_overrides(steps: int) -> list[str]:
    """One stage 1 of `steps` steps on gettext bitext, validated once, at its end."""
    stage = f"{{name: stage1, datasets: [gettext_bitext], instructions: false, steps: {steps}}}"
    return [f"data.stages=[{stage}]", f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}", "callbacks.export=null",
            "callbacks.checkpoint=null"]


def command(arm: Arm, seed: int, steps: int | None, folder: Path,
            common: list[str]) -> list[str]:
    """`steps` None: the default at full length."""
    shape = [] if steps is None else proxy_overrides(round(steps * arm.steps_factor))
    return [sys.executable, str(ROOT / "src/f2llm/train.py"), f"seed={seed}",
            f"hydra.run.dir={folder}", "trainer.enable_progress_bar=false", *shape,
            *arm.overrides, *common]


def run(cmd: list[str], folder: Path, threads: int, steps: int | None) -> dict[str, object]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with (folder / "screen.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    if rc != 0:
        tail = (folder / "screen.log").read_text()[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}; {folder / 'screen.log'} ends:\n{tail}")
    metrics = json.loads((folder / "final_metrics.json").read_text())
    width = max(int(k.rsplit("@", 1)[1]) for k in metrics if k.startswith("val/bitext/accuracy@"))
    scores = {name: metrics.get(key.format(width=width)) for name, key in SCORES.items()}
    return {"scores": scores, "wall_s": wall, "samples_per_s": metrics.get("perf/samples_per_s"),
            "steps": steps, "folder": str(folder),
            "command": " ".join(["python", *cmd[1:]])}


def table(results: dict[str, dict[int, dict[str, object]]]) -> str:
    lines = [f"| arm | seed | {' | '.join(SCORES)} | wall s | samples/s |",
             "|---|---|" + "---|" * (len(SCORES) + 2)]
    for name, by_seed in results.items():
        for seed, r in by_seed.items():
            cells = [f"{r['scores'][s]:.4f}" if r["scores"][s] is not None else "-"
                     for s in SCORES]
            lines.append(f"| {name} | {seed} | {' | '.join(cells)} | {r['wall_s']:.0f} | "
                         f"{r['samples_per_s'] or 0:.0f} |")
        if len(by_seed) > 1:
            means = [statistics.mean(r["scores"][s] for r in by_seed.values()) for s in SCORES]
            lines.append(f"| {name} | mean | {' | '.join(f'**{m:.4f}**' for m in means)} | | |")
    return "\n".join(lines)


def main() -> None:
    exit_without_final_collection()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--steps", type=int, default=400, help="proxy steps (ignored with --full)")
    ap.add_argument("--full", action="store_true", help="the default at full length")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--out", type=Path, default=ROOT / "logs" / "screen")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("overrides", nargs="*", help="after --: Hydra overrides for every run")
    args = ap.parse_args()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    jobs = {(name, seed): args.out / stamp / f"{name}_s{seed}"
            for name in args.arms for seed in args.seeds}
    print(f"{len(jobs)} runs, {args.jobs} at a time, {args.threads} thread(s) each, on "
          f"{machine()}", flush=True)

    def one(key: tuple[str, int]) -> dict[str, object]:
        name, seed = key
        steps = None if args.full else round(args.steps * ARMS[name].steps_factor)
        cmd = command(ARMS[name], seed, None if args.full else args.steps, jobs[key],
                      list(args.overrides))
        r = run(cmd, jobs[key], args.threads, steps)
        print(f"{name} seed {seed}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in r["scores"].items() if v is not None)
            + f" ({r['wall_s']:.0f} s)", flush=True)
        return r

    with ThreadPoolExecutor(args.jobs) as pool:
        done = dict(zip(jobs, pool.map(one, jobs), strict=True))
    results: dict[str, dict[int, dict[str, object]]] = {}
    for (name, seed), r in done.items():
        results.setdefault(name, {})[seed] = r
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "full": args.full,
                                         "steps": None if args.full else args.steps,
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
