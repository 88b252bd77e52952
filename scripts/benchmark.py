"""Training throughput: f2llm vs. sentence-transformers on the same work, and GradCache memory.

    python scripts/benchmark.py [--steps 20] [--warmup 3] [--json out.json] [--skip-st]
        [--skip-gradcache] [--gradcache-batch 2048] [--peak-n N]
        [Hydra overrides, e.g. model=f2llm_0_6b trainer=gpu data.max_length=512]

Without overrides: the embedded default (`experiment=gettext_tiny`). Every measured configuration
runs in its own subprocess, so its peak memory (CPU: peak RSS of the process; GPU:
`torch.cuda.max_memory_allocated`) belongs to it alone.

- matmul peak: the best of several large square matmuls in the run's compute dtype (fp32, or
  bf16/fp16 under a 16-bit `trainer.precision`), 2 n^3 FLOPs each (n: `--peak-n`, 8192 on a
  GPU and 2048 on a CPU by default).
- f2llm: `f2llm.train.build(cfg)` and `trainer.fit` for `--warmup` + `--steps` steps, without
  validation, checkpoints, loggers or callbacks; the timed steps include data loading and
  tokenization, as in training.
- sentence-transformers: the same model (our encoder from the same config and seed, exported with
  `export_sentence_transformers`), the same texts of the same batches (drawn from our datamodule),
  the same max_length, `MatryoshkaLoss(MultipleNegativesRankingLoss(scale=1/tau))` with our dims
  and weights, the same optimiser, scheduler, clipping and precision, in a plain loop: preprocess
  each column (their padding to the longest text, columns merged as their losses do), forward,
  loss, backward, step. Their MNRL also scores in-batch negatives where our clustering and
  classification batches do not; the loss is a negligible share of a step.
- GradCache memory: peak memory at global batch 2048 (`--gradcache-batch`) with
  `module.gradcache=true` vs. batch 64 plain (a batch is capped at its group's size), 1 warm-up +
  2 steps each.

samples/s counts queries (batch_size per step); tokens/s real tokens of all texts; padding
fraction = pad / (real + pad) tokens the model ran on.

Model FLOPs per step (for achieved FLOP/s and MFU = achieved / measured matmul peak), over the
real tokens of every text of the step, lengths L_i, T = sum L_i:

    forward  = 2 * P_linear * T + 4 * D_attn * sum_i L_i^2
    training = 3 * forward   (backward = 2 x forward)

P_linear: weights of the decoder's linear layers (q, k, v, o, gate, up, down in every layer); the
embedding lookup is not a matmul and Qwen3Model has no LM head. D_attn: sum over layers of
num_heads * head_dim (QK^T and AV cost 2 * L * num_heads * head_dim each per token); full L^2, no
causal halving. Padding, GradCache's second encoding and gradient-checkpointing recompute are not
counted: they are the overhead MFU shows. Prints a markdown block for docs/benchmarks.md.

Run it on a quiet machine: on CPU cores shared with other jobs, torch's OpenMP threads wait for
descheduled peers and a step of the tiny model gets tens of times slower (`OMP_NUM_THREADS=1`
avoids that, at one core's speed; the thread count is reported).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L
import torch
from _common import (
    ROOT,
    TRAINING_STEPS_ONLY,
    cpu_name,  # noqa: F401  (gpu_check.py reads bench.cpu_name)
    exit_without_final_collection,
    machine,
)
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from f2llm.compose import compose_train

GRADCACHE_BATCH, PLAIN_BATCH = 2048, 64
GRADCACHE_WARMUP, GRADCACHE_STEPS = 1, 2
MIB = 2**20


# --- configuration -------------------------------------------------------------------------------

def compose_cfg(overrides: list[str], output_dir: Path, keep: tuple[str, ...] = ()
                ) -> DictConfig:
    """The training config of `overrides`, stripped to what a timed training loop needs; `keep`:
    callbacks that shape the run (gpu_check's pruning), left as composed."""
    # After the user's overrides, so that they may set what is then turned off.
    cfg = compose_train([*overrides, *TRAINING_STEPS_ONLY], output_dir)
    with open_dict(cfg):
        # The bare step, timed against sentence-transformers' own: no other callbacks.
        cfg.callbacks = {name: cfg.callbacks[name] for name in keep} or None
        cfg.trainer.max_epochs = -1  # max_steps decides
    return cfg


def variant(cfg: DictConfig, output_dir: Path, max_steps: int, **changes: Any) -> DictConfig:
    """A resolved copy of `cfg` for one worker: its own output folder and step count."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(out):
        out.paths.output_dir = str(output_dir)
        out.trainer.default_root_dir = str(output_dir)
        out.trainer.max_steps = max_steps
        for key, value in changes.items():
            OmegaConf.update(out, key, value, force_add=True)
    return out


def max_length_of(cfg: DictConfig) -> int:
    return int(cfg.data.get("max_length") or cfg.model.max_length)


def device_of(cfg: DictConfig) -> torch.device:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    use_cuda = accelerator != "cpu" and torch.cuda.is_available()
    return torch.device("cuda" if use_cuda else "cpu")


def compute_dtype(cfg: DictConfig) -> torch.dtype:
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


# --- measurement functions --------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss() -> int:
    """Peak resident set size of this process, bytes (ru_maxrss is KiB on Linux)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def memory_now(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()


def memory_peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()


def flop_constants(backbone: nn.Module) -> tuple[int, int]:
    """(P_linear, D_attn) of a decoder: weights of its linear layers, and the summed
    num_heads * head_dim (query projection width) of its attention layers."""
    linear = sum(m.in_features * m.out_features for m in backbone.modules()
                 if isinstance(m, nn.Linear))
    attn = sum(m.q_proj.out_features for m in backbone.modules() if hasattr(m, "q_proj"))
    return linear, attn


def training_flops(linear: int, attn: int, tokens: int, sum_sq: int) -> float:
    """Model FLOPs of one forward + backward over texts with T = `tokens` real tokens and
    sum of squared lengths `sum_sq` (see the module docstring)."""
    return 3.0 * (2.0 * linear * tokens + 4.0 * attn * sum_sq)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None
                ) -> dict[str, Any]:
    """Best FLOP/s of a few large square `n` x `n` matmuls on `device` in `dtype` (`n`: 8192
    on a GPU, 2048 on a CPU unless given)."""
    size, reps = (8192, 20) if device.type == "cuda" else (2048, 6)
    n = n or size
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.matmul(a, b, out=out)  # warm-up: kernel selection, thread pool
    best = float("inf")
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return {"flops_per_s": 2.0 * n**3 / best, "n": n, "dtype": str(dtype).removeprefix("torch."),
            "reps": reps, "threads": torch.get_num_threads() if device.type == "cpu" else None}


class Tally:
    """Samples, real and pad tokens and sum of squared lengths of the timed steps. Device sums
    stay lazy (no synchronisation inside the timed loop) until `result`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.samples = self.steps = self.padded = 0
        self.real: list[Tensor] = []
        self.squares: list[Tensor] = []
        self.start = self.stop = 0.0
        self.baseline = 0

    def add_mask(self, mask: Tensor) -> None:
        lengths = mask.sum(1, dtype=torch.long)
        self.real.append(lengths.sum())
        self.squares.append((lengths * lengths).sum())
        self.padded += mask.numel()

    def begin(self) -> None:
        sync(self.device)
        self.start = time.perf_counter()

    def end(self) -> None:
        sync(self.device)
        self.stop = time.perf_counter()

    def result(self, backbone: nn.Module) -> dict[str, Any]:
        tokens = int(torch.stack(self.real).sum()) if self.real else 0
        sum_sq = int(torch.stack(self.squares).sum()) if self.squares else 0
        padding = self.padded - tokens
        seconds = self.stop - self.start
        linear, attn = flop_constants(backbone)
        flops = training_flops(linear, attn, tokens, sum_sq)
        peak = memory_peak(self.device)
        return {
            "steps": self.steps,
            "seconds": seconds,
            "samples": self.samples,
            "tokens": tokens,
            "padding": padding,
            "samples_per_s": self.samples / seconds,
            "tokens_per_s": tokens / seconds,
            "padding_fraction": padding / max(1, padding + tokens),
            "mean_batch_size": self.samples / max(1, self.steps),
            "flops_per_step": flops / max(1, self.steps),
            "flops_per_s": flops / seconds,
            "device": str(self.device),
            "params": sum(p.numel() for p in backbone.parameters()),
            "linear_params": linear,
            "peak_memory_mib": peak / MIB,
            "baseline_memory_mib": self.baseline / MIB,
            "training_memory_mib": (peak - self.baseline) / MIB,
            "peak_rss_mib": peak_rss() / MIB,
        }


# --- workers (each in its own process) -----------------------------------------------------------

class StepMeter(L.Callback):
    """Times steps warmup+1 .. warmup+steps and tallies their texts."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps, self.seen = warmup, steps, 0
        self.tally: Tally | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.tally = Tally(pl_module.device)
        self.tally.baseline = memory_now(pl_module.device)
        if self.warmup == 0:
            self.tally.begin()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        self.seen += 1
        if self.warmup < self.seen <= self.warmup + self.steps:
            self.tally.steps += 1
            self.tally.samples += batch.batch_size
            for chunk in batch.chunks:
                self.tally.add_mask(chunk["attention_mask"])
        if self.seen == self.warmup:
            self.tally.begin()
        elif self.seen == self.warmup + self.steps:
            self.tally.end()


def run_f2llm(cfg: DictConfig, warmup: int, steps: int) -> dict[str, Any]:
    """`trainer.fit` as `f2llm.train.train` runs it, timed by a callback."""
    from f2llm.train import build

    L.seed_everything(cfg.seed, workers=True)
    module, datamodule, trainer = build(cfg)
    meter = StepMeter(warmup, steps)
    trainer.callbacks.append(meter)
    trainer.fit(module, datamodule=datamodule, weights_only=True)
    if meter.tally is None or meter.tally.steps < steps:
        raise RuntimeError(f"training stopped after {meter.seen} of {warmup + steps} steps")
    out = meter.tally.result(module.encoder.backbone)
    out["precision"] = str(cfg.trainer.precision)
    out["gradcache"] = bool(cfg.module.gradcache)
    return out


def run_st(cfg: DictConfig, model_dir: Path, batches_file: Path, warmup: int,
           steps: int) -> dict[str, Any]:
    """The same batches through sentence-transformers' model and losses in a plain loop."""
    import sentence_transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
    )

    saved = json.loads(batches_file.read_text())
    batches = saved["batches"][: warmup + steps]
    device = device_of(cfg)
    precision = str(cfg.trainer.get("precision", "32-true"))
    model = SentenceTransformer(str(model_dir), device=str(device), model_kwargs={
        "attn_implementation": saved["attn_implementation"], "dtype": torch.float32})
    model.max_seq_length = max_length_of(cfg)
    backbone = model[0].auto_model
    if cfg.model.get("gradient_checkpointing"):
        backbone.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    if precision == "bf16-true":
        model.to(torch.bfloat16)
    autocast = (torch.autocast(device.type, dtype=compute_dtype(cfg))
                if precision.endswith("-mixed") else nullcontext())
    objective = instantiate(cfg.objective)
    dims, weights = objective.dims_and_weights(backbone.config.hidden_size)
    loss_fn = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model, scale=1.0 / objective.tau),
                             matryoshka_dims=dims, matryoshka_weights=weights)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.optimizer)(params=params)
    scheduler = (instantiate(cfg.scheduler)(optimizer=optimizer, total_steps=warmup + steps)
                 if cfg.get("scheduler") else None)
    clip = cfg.trainer.get("gradient_clip_val")

    tally = Tally(device)
    counting = [False]

    def count(module: nn.Module, args: tuple) -> None:
        # What the model runs on, after their column merging and padding.
        if counting[0]:
            tally.add_mask(args[0]["attention_mask"])

    model[0].register_forward_pre_hook(count)
    model.train()
    tally.baseline = memory_now(device)
    if warmup == 0:
        tally.begin()
    for i, batch in enumerate(batches):
        counting[0] = i >= warmup
        features = [{k: v.to(device) if isinstance(v, Tensor) else v
                     for k, v in model.preprocess(column).items()}
                    for column in batch["columns"]]
        with autocast:
            loss = loss_fn(features, None)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            tally.steps += 1
            tally.samples += len(batch["columns"][0])
        if i + 1 == warmup:
            tally.begin()
    tally.end()
    out = tally.result(backbone)
    out["precision"] = precision
    out["version"] = sentence_transformers.__version__
    return out


def export_batches(cfg: DictConfig, model_dir: Path, batches_file: Path, n: int) -> None:
    """Our encoder (same config, same seed as the f2llm run) as a sentence-transformers folder,
    and the texts of our datamodule's first `n` training batches, as columns."""
    import transformers

    from f2llm.export import export_sentence_transformers

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    encoder = instantiate(cfg.model)
    transformers.utils.logging.disable_progress_bar()
    export_sentence_transformers(encoder, model_dir)
    datamodule = instantiate(cfg.data, encoder=encoder)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    dataset = loader.dataset
    batches = []
    for item in loader.sampler:  # the sampler batches the loader would serve, in order
        texts, batch = dataset.texts(item), dataset[item]
        b = batch.batch_size
        # TrainBatch's layout: queries, positives, then each negative column in turn.
        columns = [texts[j * b : (j + 1) * b] for j in range(2 + batch.num_negatives)]
        batches.append({"columns": columns, "num_tokens": batch.num_tokens})
        if len(batches) == n:
            break
    # The kernel our encoder resolved (`attn_implementation: auto` depends on the machine).
    attention = encoder.backbone.config._attn_implementation
    batches_file.write_text(json.dumps({"attn_implementation": attention, "batches": batches}))


def worker_main(args: argparse.Namespace) -> None:
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    cfg = OmegaConf.load(args.config)
    if args.worker == "f2llm":
        out = run_f2llm(cfg, args.warmup, args.steps)
    else:
        out = run_st(cfg, args.model_dir, args.batches, args.warmup, args.steps)
    args.out.write_text(json.dumps(out, indent=2))


# --- orchestration --------------------------------------------------------------------------------

def spawn(name: str, cfg: DictConfig, work: Path, warmup: int, steps: int,
          *extra: str) -> dict[str, Any]:
    """Run one worker in a fresh process; its JSON result."""
    config, out = work / f"{name}.yaml", work / f"{name}.json"
    OmegaConf.save(cfg, config)
    kind = "st" if name == "st" else "f2llm"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind,
               "--config", str(config), "--out", str(out),
               "--warmup", str(warmup), "--steps", str(steps), *extra]
    print(f"[{name}] {warmup} warm-up + {steps} timed steps, batch {cfg.data.batch_size}"
          f"{', gradcache' if cfg.module.gradcache else ''} ...", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if done.returncode:
        print(done.stdout[-6000:], file=sys.stderr)
        raise SystemExit(f"[{name}] worker failed (exit {done.returncode})")
    result = json.loads(out.read_text())
    print(f"[{name}] {result['samples_per_s']:.1f} samples/s, {result['tokens_per_s']:.0f} "
          f"tokens/s, padding {result['padding_fraction']:.1%}, peak memory "
          f"{result['peak_memory_mib']:.0f} MiB ({time.perf_counter() - start:.0f} s in all)",
          flush=True)
    return result


def describe(cfg: DictConfig) -> dict[str, Any]:
    shape = cfg.model.get("shape") or {}
    return {
        "model": str(cfg.model.name),
        "pretrained": cfg.model.get("pretrained"),
        "layers": shape.get("num_hidden_layers"),
        "hidden_size": shape.get("hidden_size"),
        "batch_size": int(cfg.data.batch_size),
        "max_length": max_length_of(cfg),
        "max_tokens_per_chunk": int(cfg.data.max_tokens_per_chunk),
        "num_negatives": dict(cfg.data.get("num_negatives") or {}),
        "precision": str(cfg.trainer.get("precision")),
        "optimizer": {k: v for k, v in OmegaConf.to_container(cfg.optimizer).items()
                      if not k.startswith("_")},
    }


def flops_str(flops_per_s: float) -> str:
    if flops_per_s >= 1e12:
        return f"{flops_per_s / 1e12:.1f} TFLOP/s"
    return f"{flops_per_s / 1e9:.2f} GFLOP/s"


def gib_or_mib(mib: float) -> str:
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def markdown(result: dict[str, Any]) -> str:
    c, peak, f2llm = result["config"], result["peak"], result["f2llm"]
    memory = "GPU max allocated" if result["device"].startswith("cuda") else "peak RSS"
    lines = [
        f"### Training throughput, {result['date']}",
        "",
        f"- Machine: {result['machine']}; torch {result['torch']}, {result['threads']} CPU "
        f"thread{'s' if result['threads'] != 1 else ''}; device {result['device']}",
        f"- Command: `{result['command']}`",
        f"- Config: model {c['model']} (layers {c['layers']}, hidden {c['hidden_size']}, "
        f"{f2llm['params'] / 1e6:.1f}M parameters, {f2llm['linear_params'] / 1e6:.2f}M in linear "
        f"layers), batch "
        f"{c['batch_size']}, max_length {c['max_length']}, max_tokens_per_chunk "
        f"{c['max_tokens_per_chunk']}, precision {c['precision']}; {result['warmup']} warm-up + "
        f"{result['steps']} timed steps",
        f"- Matmul peak ({peak['dtype']}, {peak['n']}^3, best of {peak['reps']}): "
        f"{flops_str(peak['flops_per_s'])}",
        "",
    ]
    rows = [(name, result[key]) for name, key in
            (("f2llm", "f2llm"), (f"sentence-transformers {result.get('st', {}).get('version')}",
                                  "st")) if key in result]
    if rows:
        lines += [f"| trainer | samples/s | tokens/s | padding | {memory} | achieved | MFU |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
                  f"{r['padding_fraction']:.1%} | {gib_or_mib(r['peak_memory_mib'])} | "
                  f"{flops_str(r['flops_per_s'])} | {r['mfu']:.2%} |" for name, r in rows]
        if "ratio_samples_per_s" in result:
            lines += ["", f"f2llm / sentence-transformers samples/s: "
                          f"**{result['ratio_samples_per_s']:.2f}x**"]
        lines.append("")
    if "gradcache" in result:
        g = result["gradcache"]
        lines += [f"| GradCache memory | mean batch | {memory} | above start of training | "
                  "samples/s |", "|---|---|---|---|---|"]
        for name in ("plain", "gradcache"):
            r = g[name]
            lines.append(f"| {name} | {r['mean_batch_size']:.0f} | "
                         f"{gib_or_mib(r['peak_memory_mib'])} | "
                         f"{gib_or_mib(r['training_memory_mib'])} | {r['samples_per_s']:.1f} |")
        lines += ["", f"GradCache batch {g['batch']['gradcache']} / plain batch "
                      f"{g['batch']['plain']} peak memory: **{g['memory_ratio']:.2f}x** "
                      "(target <= 1.3x)", ""]
    return "\n".join(lines)


def main() -> None:
    exit_without_final_collection()  # the orchestrator's and every worker's
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the training config")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--skip-st", action="store_true", help="no sentence-transformers run")
    ap.add_argument("--skip-gradcache", action="store_true", help="no GradCache memory runs")
    ap.add_argument("--gradcache-batch", type=int, default=GRADCACHE_BATCH,
                    help=f"global batch of the GradCache memory run (the plain one: {PLAIN_BATCH})")
    # A worker: one measured configuration, started by the orchestrator.
    ap.add_argument("--peak-n", type=int, default=None,
                    help="size of the matmul peak's matrices (default 8192 GPU, 2048 CPU)")
    ap.add_argument("--worker", choices=["f2llm", "st"], help=argparse.SUPPRESS)
    ap.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--batches", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_intermixed_args()
    if args.worker:
        worker_main(args)
        return
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    if args.gradcache_batch <= PLAIN_BATCH:
        ap.error(f"--gradcache-batch must exceed the plain run's batch {PLAIN_BATCH}")

    from f2llm.config_checks import check_config

    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": shlex.join(["python", "scripts/benchmark.py", *sys.argv[1:]]),
        "warmup": args.warmup,
        "steps": args.steps,
    }
    with tempfile.TemporaryDirectory(prefix="f2llm-benchmark-") as tmp:
        work = Path(tmp)
        cfg = compose_cfg(args.overrides, work / "run")
        check_config(cfg)
        device = device_of(cfg)
        result["device"] = str(device)
        result["config"] = describe(cfg)
        if not args.skip_st and (cfg.model.get("lora") or cfg.get("teacher")):
            print("note: sentence-transformers trains every weight of the (merged) export, "
                  "without a teacher: not the same work as this config's LoRA / KD", flush=True)
        print(f"benchmark: {json.dumps(result['config'])}", flush=True)
        total = args.warmup + args.steps

        result["f2llm"] = spawn("f2llm", variant(cfg, work / "f2llm", total), work,
                                args.warmup, args.steps)
        if not args.skip_st:
            model_dir, batches = work / "st_model", work / "batches.json"
            print(f"[st] exporting the model and the texts of {total} batches ...", flush=True)
            export_batches(variant(cfg, work / "st", total), model_dir, batches, total)
            result["st"] = spawn("st", variant(cfg, work / "st", total), work, args.warmup,
                                 args.steps, "--model-dir", str(model_dir), "--batches",
                                 str(batches))
            if result["st"]["tokens"] != result["f2llm"]["tokens"]:
                print(f"warning: sentence-transformers saw {result['st']['tokens']} real tokens, "
                      f"f2llm {result['f2llm']['tokens']}: not the same texts", flush=True)
            result["ratio_samples_per_s"] = (result["f2llm"]["samples_per_s"]
                                             / result["st"]["samples_per_s"])
        if not args.skip_gradcache:
            steps = GRADCACHE_WARMUP + GRADCACHE_STEPS
            plain = variant(cfg, work / "plain", steps, **{"module.gradcache": False,
                                                           "data.batch_size": PLAIN_BATCH})
            cached = variant(cfg, work / "gradcache", steps, **{
                "module.gradcache": True, "data.batch_size": args.gradcache_batch})
            g = {"batch": {"plain": PLAIN_BATCH, "gradcache": args.gradcache_batch},
                 "plain": spawn("plain", plain, work, GRADCACHE_WARMUP, GRADCACHE_STEPS),
                 "gradcache": spawn("gradcache", cached, work, GRADCACHE_WARMUP,
                                    GRADCACHE_STEPS)}
            g["memory_ratio"] = g["gradcache"]["peak_memory_mib"] / g["plain"]["peak_memory_mib"]
            g["training_memory_ratio"] = (g["gradcache"]["training_memory_mib"]
                                          / max(1e-9, g["plain"]["training_memory_mib"]))
            result["gradcache"] = g

    print("[peak] timing large matmuls ...", flush=True)
    result["peak"] = matmul_peak(device, compute_dtype(cfg), args.peak_n)
    for key in ("f2llm", "st"):
        if key in result:
            result[key]["mfu"] = result[key]["flops_per_s"] / result["peak"]["flops_per_s"]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print()
    print(markdown(result))


if __name__ == "__main__":
    main()
