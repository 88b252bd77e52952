"""Does the loader keep up? Batches/s of the training loader vs. the model's steps/s, and padding.

    python scripts/bench_loader.py [--batches 200] [--steps 40] [--warmup 5] [--json out.json] \
        [overrides ...]

Without overrides: the embedded default (`experiment=gettext_tiny`), its stage-2 schedule as
well as stage 1 (`--stage`). Three measurements in one process, one after another:

- loader: the training DataLoader as the trainer gets it (sampler, Arrow rows, instructions,
  tokenization, length packing), `--batches` batches, nothing else running; batches/s.
- model: `f2llm.train.build(cfg)` and `trainer.fit` for `--steps` steps (after `--warmup`
  untimed ones) with no validation, checkpoints or loggers; the loader is inside the step here
  too, so the model's own time per step is the step time minus the loader's time per batch.
- padding: over the loader's batches, pad tokens / all tokens the model runs on, as packed
  (sorted by length, chunks of at most `data.max_tokens_per_chunk` tokens) and as one
  padded-to-the-longest tensor per batch (what an unsorted collate gives).

Prints a markdown block for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import lightning as L
import torch
from _common import TRAINING_STEPS_ONLY, exit_without_final_collection, machine, scratch_dir
from _step_timer import StepTimer
from hydra.utils import instantiate
from omegaconf import open_dict

from f2llm.compose import compose_train
from f2llm.data.batch import TrainBatch
from f2llm.train import build

# No Hydra run here, so no run folder: anything a build writes goes to a temporary one.
SCRATCH = "bench_loader_"


def loader_batches(cfg, n: int, start: int) -> tuple[float, list[TrainBatch]]:
    """Seconds for `n` batches of the training loader from schedule position `start`."""
    datamodule = instantiate(cfg.data, encoder=instantiate(cfg.model))
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.sampler.load_state_dict({**datamodule.sampler.state_dict(), "position": start})
    loader = iter(datamodule.train_dataloader())
    next(loader)  # first-batch costs (worker start, tokenizer warm-up) are not per-batch costs
    t0 = time.perf_counter()
    batches = [next(loader) for _ in range(n)]
    return time.perf_counter() - t0, batches


def padding_fractions(batches: list[TrainBatch]) -> tuple[float, float]:
    """(packed, padded to the longest) pad share of all tokens the model runs on."""
    real = sum(b.num_tokens for b in batches)
    packed = sum(b.num_padding for b in batches)
    longest = 0
    for b in batches:
        lengths = [int(n) for c in b.chunks for n in c["attention_mask"].sum(1)]
        longest += max(lengths) * len(lengths) - sum(lengths)
    return packed / (real + packed), longest / (real + longest)


def model_step_seconds(overrides: list[str], stage: int, steps: int, warmup: int = 5) -> float:
    """Mean seconds per training step (loader included) after `warmup` steps of stage
    `stage`, training steps only."""
    cfg = compose_train([*overrides, *TRAINING_STEPS_ONLY], scratch_dir(SCRATCH))
    with open_dict(cfg):
        cfg.trainer.max_steps = steps + warmup
        cfg.trainer.val_check_interval = None
        if stage:  # the model's steps come from the same stage as the loader's batches
            cfg.data.stages = list(cfg.data.stages)[stage:]
    module, datamodule, trainer = build(cfg)
    timer = StepTimer()
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=datamodule)
    return timer.ms_per_step(warmup - 1) / 1000


def main() -> None:
    exit_without_final_collection()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the training config")
    ap.add_argument("--batches", type=int, default=200, help="loader batches timed")
    ap.add_argument("--steps", type=int, default=40, help="training steps timed")
    ap.add_argument("--warmup", type=int, default=5, help="training steps before the timed ones")
    ap.add_argument(
        "--stage",
        type=int,
        default=0,
        help="0: the first stage's schedule; 1: the second's, and so on",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 1:
        ap.error("--steps and --warmup must be at least 1 (the timing starts at a step's end)")

    cfg = compose_train(args.overrides, scratch_dir(SCRATCH))
    start = sum(int(s["steps"]) for s in list(cfg.data.stages or [])[: args.stage])
    L.seed_everything(cfg.seed)
    loader_s, batches = loader_batches(cfg, args.batches, start)
    per_batch = loader_s / args.batches
    packed, longest = padding_fractions(batches)
    formats = sorted({b.format for b in batches})
    per_step = model_step_seconds(args.overrides, args.stage, args.steps, args.warmup)
    model_only = per_step - per_batch
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "command": "python scripts/bench_loader.py " + shlex.join(sys.argv[1:]),
        "stage": args.stage,
        "formats": formats,
        "batch_size": int(cfg.data.batch_size),
        "loader_batches_per_s": 1 / per_batch,
        "loader_ms_per_batch": 1000 * per_batch,
        "step_ms": 1000 * per_step,
        "model_ms_per_step": 1000 * model_only,
        "ratio": model_only / per_batch,
        "padding_packed": packed,
        "padding_longest": longest,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(f"### Loader vs. model, {result['date']}\n")
    print(f"- Machine: {result['machine']}\n- Command: `{result['command']}`")
    print(
        f"- Stage {args.stage} schedule ({', '.join(formats)}), batch {result['batch_size']}, "
        f"{args.batches} loader batches, {args.steps} training steps\n"
    )
    print("| what | value |\n|---|---|")
    print(f"| loader, ms per batch | {result['loader_ms_per_batch']:.1f} |")
    print(f"| training step (loader included), ms | {result['step_ms']:.1f} |")
    print(f"| model's own time per step, ms | {result['model_ms_per_step']:.1f} |")
    print(f"| loader speed / model speed | {result['ratio']:.1f}x |")
    print(f"| padding, length-packed chunks | {100 * packed:.2f}% |")
    print(f"| padding, each batch padded to its longest text | {100 * longest:.2f}% |")


if __name__ == "__main__":
    main()
