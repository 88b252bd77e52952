"""GPU proof of the 0.6B recipe: matmul peak, speed levers and MFU, FSDP2 kill/resume and
export, pruning + KD step times; every number from this one run.

    python scripts/gpu_check.py [--toy] [--out-dir DIR] [--work DIR] [--budget-s 270]

Writes `<out-dir>/gpu_check.json` (after every section, so a run cut short keeps what it
measured) and `<out-dir>/gpu_check.md`; out-dir: docs/, or logs/gpu_check_toy/ with --toy.
`--toy`: the same sections at a CPU-sized shape (the test runs it so the script cannot rot
while no GPU is around). On a GPU machine: install the project there (`pip install -e .`),
then `python scripts/gpu_check.py`; on one that cannot fetch packages, scripts/gpu_wheels.sh
and scripts/gpu_check.sh bring and install what it lacks, then run this.

Sections:
a. peak: best of 20 bf16 matmuls 8192^3 (toy: 6 fp32 1024^3), 2 n^3 FLOPs each.
b. speed: `model=f2llm_0_6b` (random init, the bundled Qwen3 tokenizer), synthetic retrieval
   texts longer than 512 tokens truncated to exactly 512, 7 hard negatives, bf16-mixed,
   built by `f2llm.train.build` from the Hydra configs and trained by `trainer.fit`, one
   configuration after another in this process. Levers: sdpa (baseline), fused AdamW,
   gradient checkpointing, flash-attention 2 (only if `flash_attn` imports), `torch.compile`
   of each decoder layer. Then batches double until one does not fit (with and without
   gradient checkpointing); the fastest configuration measured is the headline.
   MFU = model FLOPs / measured peak, model FLOPs per step = 6 N T + 12 D sum_i L_i^2:
   N the non-embedding parameters (the embedding lookup does no matmul), T the real tokens of
   every text of the step, L_i their lengths, D the sum over layers of num_heads * head_dim
   (QK^T and AV, full L^2: no causal halving). Gradient-checkpointing recompute is not counted.
c. fsdp: `python src/f2llm/train.py trainer=fsdp` (toy: `trainer=fsdp_sim`, 2 CPU processes
   over gloo) on every GPU present, 30 steps, sharded checkpoints every 15 (each holds the
   weights and AdamW state, about 7 GB at 0.6B); a second run is killed (SIGKILL to all
   ranks) at step 20 and resumed from its run folder (step 15). The resumed
   losses are compared with the uninterrupted run's step by step on every rank (toy: with
   the killed run's, uninterrupted up to the kill, over the replayed steps); the export of
   the resumed run is loaded with `SentenceTransformer` and its embeddings compared with the
   training model's (its final sharded checkpoint, gathered).
e. precision: what one GPU shows that a CPU cannot. Which attention `attn_implementation: auto`
   picks for bf16 and for 32-bit training; `Encoder.encode` and pruning calibration with that
   attention on float32 weights (outside the training step: they autocast to bf16 where the
   kernel takes half precision only, `f2llm.model.encoder.inference_autocast`), against sdpa;
   the rotary frequencies after the model is cast to bf16 (they stay float32: the cos/sin at
   the longest position are compared with a float32 model's).
   The multi-rank checks (ranks with different numbers of chunks, DDP and FSDP2 with every
   feature) run on CPU processes in tests/distributed/test_conformance.py.
d. prune: the 0.6B shape (random init, saved as a folder that is also the teacher) pruned to
   the 80M target by the `StructuredPruning` callback on the GPU (`experiment=prune_distill_80m`),
   then step times without KD, with the online teacher, and with the cached teacher (a first
   run fills the cache; the timed run reads it).

Not measured here (no code for it yet): padding-free packing (texts of exactly 512 tokens
have no padding to remove) and removing the host synchronisation per step (the module's
non-finite check reads the loss on the host).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L
import torch
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import benchmark as bench  # noqa: E402
from _common import exit_without_final_collection  # noqa: E402

from f2llm.compose import compose_train  # noqa: E402

MIB = 2**20
MFU_FORMULA = ("MFU = model FLOPs / measured bf16 matmul peak; model FLOPs per step = "
               "6*N*T + 12*D*sum(L_i^2), N = non-embedding parameters, T = real tokens of all "
               "texts of the step, L_i their lengths, D = sum over layers of num_heads*head_dim "
               "(full L^2, no causal halving); gradient-checkpointing recompute not counted")
# bf16 keeps 8 significant bits: a loss that differs after a resume only by the order of
# floating-point reductions (atomics in a GPU kernel's backward) differs by about one bf16
# rounding, 2^-8 relative. Equal bits are reported separately.
BF16_REL_TOLERANCE = 2.0**-8


@dataclass
class Shape:
    """What one profile runs (full: the 0.6B on a GPU; toy: a CPU-sized model)."""

    model: list[str]
    trainer: str
    max_length: int
    negatives: int
    batch: int
    warmup: int
    steps: int
    sweep: list[int]
    fsdp_trainer: str
    fsdp_model: list[str]
    fsdp_batch: int
    fsdp_max_length: int
    fsdp_steps: int
    fsdp_every: int
    fsdp_kill_at: int
    prune_experiment: str
    prune_model: list[str]
    prune_target: str
    prune_calibration: int
    records: int
    fsdp_full_run: bool = True
    peak_n: int = 8192
    fsdp_timeout_s: float = 600.0
    prune_overrides: list[str] = field(default_factory=list)
    levers: list[str] = field(default_factory=lambda: [
        "sdpa", "fused_adamw", "gradient_checkpointing", "flash_attention_2", "compile"])

    def __post_init__(self) -> None:
        # The export is compared with the last checkpoint, and the kill falls after one.
        if self.fsdp_steps % self.fsdp_every or not self.fsdp_every < self.fsdp_kill_at \
                < self.fsdp_steps:
            raise ValueError("fsdp: steps must be a multiple of the checkpoint interval, and "
                             "the kill between the first checkpoint and the end")


FULL = Shape(model=["model=f2llm_0_6b"], trainer="gpu", max_length=512, negatives=7, batch=16,
             warmup=2, steps=5, sweep=[32, 64, 128, 256, 512], fsdp_trainer="fsdp",
             fsdp_model=["model=f2llm_0_6b"], fsdp_batch=8, fsdp_max_length=128,
             fsdp_steps=30, fsdp_every=15, fsdp_kill_at=20, fsdp_timeout_s=240.0,
             prune_experiment="prune_distill_80m", prune_model=["model=f2llm_0_6b"],
             prune_target="f2llm_80m", prune_calibration=256, records=2048)
TOY_SHAPE = ["model.shape.hidden_size=32", "model.shape.num_hidden_layers=2",
             "model.shape.num_attention_heads=2", "model.shape.num_key_value_heads=1",
             "model.shape.head_dim=16", "model.shape.intermediate_size=64"]
TOY_PRUNED = {"hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16}
TOY = Shape(model=["model=tiny", *TOY_SHAPE], trainer="cpu", max_length=32, negatives=1,
            batch=4, warmup=1, steps=1, sweep=[], fsdp_trainer="fsdp_sim",
            fsdp_model=["model=tiny", *TOY_SHAPE], fsdp_batch=4, fsdp_max_length=32,
            fsdp_steps=4, fsdp_every=2, fsdp_kill_at=3,
            prune_experiment="prune_distill_tiny", prune_model=["model=tiny", *TOY_SHAPE],
            prune_overrides=[f"callbacks.pruning.target.shape.{k}={v}"
                             for k, v in TOY_PRUNED.items()],
            prune_target="tiny_half", prune_calibration=32, records=64, fsdp_full_run=False,
            peak_n=1024,
            levers=["sdpa", "fused_adamw", "gradient_checkpointing", "flash_attention_2"])


class Clock:
    """Seconds since the start, against a budget for the optional measurements."""

    def __init__(self, budget_s: float) -> None:
        self.start, self.budget = time.perf_counter(), budget_s

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", flush=True)


# --- data: synthetic retrieval records, every text longer than max_length ---

def write_corpus(folder: Path, records: int, negatives: int, max_length: int) -> Path:
    """A manifest of one retrieval parquet whose texts all truncate to `max_length` tokens."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    pool = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(50_000)]
    words = max_length + 64  # each word is at least one token: every text is truncated

    def text() -> str:
        start = rng.randrange(len(pool) - words)
        return " ".join(pool[start : start + words])

    columns: dict[str, list[str]] = {"query": [], "passage": []}
    for j in range(1, negatives + 1):
        columns[f"negative_{j}"] = []
    for _ in range(records):
        for column in columns.values():
            column.append(text())
    pq.write_table(pa.table(columns), folder / "synthetic.parquet")
    manifest = folder / "manifest.yaml"
    manifest.write_text("datasets:\n  - {name: synthetic, path: synthetic.parquet, "
                        "format: retrieval, language: en}\n")
    return manifest


def data_overrides(manifest: Path, data_dir: Path, batch: int, max_length: int,
                   negatives: int, workers: int = 2) -> list[str]:
    return ["data=manifest", f"data.num_workers={workers}", f"data.corpus.manifest={manifest}",
            "data.stages=null",
            f"paths.data_dir={data_dir}", f"data.batch_size={batch}",
            f"data.max_length={max_length}", f"model.max_length={max_length}",
            f"data.num_negatives.retrieval={negatives}",
            f"data.corpus.num_negatives={{retrieval:{negatives}}}", "data.alpha=1.0",
            "optimizer.lr=1.0e-4", "scheduler.warmup_steps=2"]


# --- a. the matmul peak ---

def peak_section(shape: Shape, device: torch.device, toy: bool) -> dict[str, Any]:
    dtype = torch.float32 if toy else torch.bfloat16
    return bench.matmul_peak(device, dtype, shape.peak_n)


# --- b. speed ---

def model_flops(backbone: torch.nn.Module, tokens: int, sum_sq: int) -> tuple[float, int]:
    """(training FLOPs by MFU_FORMULA, N non-embedding parameters)."""
    embedding = backbone.get_input_embeddings().weight.numel()
    n = sum(p.numel() for p in backbone.parameters()) - embedding
    attn = sum(m.q_proj.out_features for m in backbone.modules() if hasattr(m, "q_proj"))
    return 6.0 * n * tokens + 12.0 * attn * sum_sq, n


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def train_timed(cfg: DictConfig, warmup: int, steps: int) -> dict[str, Any]:
    """`f2llm.train.build` + `trainer.fit` for warmup + steps steps, the last `steps` timed."""
    from f2llm.train import build

    free_memory()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    meter = bench.StepMeter(warmup, steps)
    module, datamodule, trainer = build(cfg, [meter])
    try:
        trainer.fit(module, datamodule=datamodule, weights_only=True)
        if meter.tally is None or meter.tally.steps < steps:
            raise RuntimeError(f"training stopped after {meter.seen} of {warmup + steps} steps")
        out = meter.tally.result(module.encoder.backbone)
        tally = meter.tally
        tokens = int(torch.stack(tally.real).sum())
        sum_sq = int(torch.stack(tally.squares).sum())
        flops, n = model_flops(module.encoder.backbone, tokens, sum_sq)
        out.update(model_flops_per_s=flops / out["seconds"], non_embedding_params=n,
                   step_s=out["seconds"] / out["steps"],
                   attention=module.encoder.backbone.config._attn_implementation)
        if module.teacher is not None and module.teacher.mode == "cached":
            cache = module.teacher.cache(0)
            seen = cache.hits + cache.misses
            out["teacher_cache_hit_rate"] = cache.hits / seen if seen else 0.0
        return out
    finally:
        del module, datamodule, trainer, meter
        free_memory()


# Lightning refuses gradient clipping with a fused optimizer under mixed precision (its
# MixedPrecision.clip_gradients raises: the fused step unscales internally), and the recipe
# clips at 1.0: the fused lever runs without clipping, so it is reported but is not the recipe.
NOT_RECIPE = {"fused_adamw": "no gradient clipping: Lightning refuses clipping with a fused "
                             "optimizer under mixed precision (the recipe clips at 1.0)"}


def lever_overrides(name: str) -> list[str] | str:
    """Overrides of one lever (each on top of the baseline: sdpa, AdamW as torch picks its
    implementation, the recipe's clipping), or the reason it is not measured."""
    baseline = ["model.attn_implementation=sdpa", "optimizer=adamw"]
    if name == "sdpa":
        return baseline
    if name == "fused_adamw":
        return [baseline[0], "optimizer=adamw_fused", "trainer.gradient_clip_val=null"]
    if name == "gradient_checkpointing":
        return [*baseline, "model.gradient_checkpointing=true"]
    if name == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
            return "flash_attn is not importable here (or no GPU)"
        return ["model.attn_implementation=flash_attention_2", baseline[1]]
    if name == "compile":
        return [*baseline, "++model.compile=true"]
    raise ValueError(name)


def timed_run(base: list[str], work: Path, name: str, overrides: list[str], warmup: int,
              steps: int, peak: float) -> dict[str, Any]:
    """One configuration: its numbers, or {"status": "oom" | "error"}."""
    cfg = bench.compose_cfg([*base, *overrides], work / name)
    cfg = bench.variant(cfg, work / name, warmup + steps)
    start = time.perf_counter()
    failed: dict[str, Any] | None = None
    try:
        out = train_timed(cfg, warmup, steps)
    except Exception as e:  # a configuration that fails is a result, not a crash
        status = "oom" if is_oom(e) else "error"
        log(f"{name}: {status}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        if status == "error":
            traceback.print_exc()
        failed = {"status": status, "error": f"{type(e).__name__}: {e}"[:500]}
    if failed is not None:
        free_memory()  # after the except block: the traceback no longer holds the tensors
        return failed
    out["status"] = "ok"
    out["mfu"] = out["model_flops_per_s"] / peak
    out["wall_s"] = time.perf_counter() - start
    log(f"{name}: {out['tokens_per_s']:.0f} tokens/s, {out['samples_per_s']:.1f} samples/s, "
        f"MFU {out['mfu']:.1%}, peak {out['peak_memory_mib']:.0f} MiB, {out['wall_s']:.0f} s")
    return out


def speed_section(shape: Shape, base: list[str], work: Path, peak: float,
                  result: dict[str, Any], save: Any) -> None:
    """The levers, one at a time at the same batch."""
    speed: dict[str, Any] = {"batch_size": shape.batch, "max_length": shape.max_length,
                             "hard_negatives": shape.negatives, "levers": {}}
    result["speed"] = speed
    for name in shape.levers:
        overrides = lever_overrides(name)
        if isinstance(overrides, str):
            speed["levers"][name] = {"status": "skipped", "reason": overrides}
        else:
            speed["levers"][name] = timed_run(base, work, name, overrides, shape.warmup,
                                              shape.steps, peak)
            if name in NOT_RECIPE:
                speed["levers"][name].update(recipe=False, note=NOT_RECIPE[name])
        save()
    speed["levers"]["padding_free_packing"] = {
        "status": "skipped", "reason": "not implemented; the texts (all exactly "
        f"{shape.max_length} tokens) have no padding for it to remove"}
    speed["levers"]["no_host_sync_per_step"] = {
        "status": "skipped", "reason": "not implemented: F2LLMModule._finite reads the loss "
        "on the host every step (bool(finite > 0))"}
    ok = {k: v for k, v in speed["levers"].items()
          if v.get("status") == "ok" and v.get("recipe", True)}
    # The fastest lever that keeps the recipe (NOT_RECIPE ones are reported, not chosen).
    speed["winner"] = max(ok, key=lambda k: ok[k]["tokens_per_s"]) if ok else None
    update_best(speed)
    save()


def sweep_section(shape: Shape, base: list[str], work: Path, clock: Clock, peak: float,
                  result: dict[str, Any], save: Any) -> None:
    """Largest batch: double until one does not fit or the budget is spent, with and without
    gradient checkpointing, the winning lever's other settings kept. Run last: it takes
    whatever time is left."""
    speed = result.setdefault("speed", {"levers": {}, "winner": None})
    winner = speed.get("winner") or "sdpa"
    # Without torch.compile: every new model compiles again, and that would eat the budget.
    settings = [o for o in lever_overrides(winner)
                if not o.startswith(("model.gradient_checkpointing", "++model.compile"))]
    speed["sweep"], speed["largest_batch"] = {}, {}
    for checkpointing in (False, True):
        key = f"gradient_checkpointing_{'on' if checkpointing else 'off'}"
        rows: dict[int, dict[str, Any]] = {}
        last_wall = 0.0
        # The lever measured with these settings at the levers' batch: not run again.
        same = same_lever(winner, checkpointing)
        for batch in [shape.batch, *shape.sweep]:
            measured = speed["levers"].get(same, {})
            if batch == shape.batch and measured.get("status") == "ok":
                rows[batch] = {**measured, "from": f"lever {same}"}
                continue
            # The next batch takes about twice the last one's time.
            if clock.left() < 2 * last_wall or clock.left() < 0:
                rows[batch] = {"status": "skipped", "reason": "time budget spent"}
                break
            rows[batch] = timed_run(base, work, f"{key}_b{batch}", [
                *settings, f"model.gradient_checkpointing={str(checkpointing).lower()}",
                f"data.batch_size={batch}"], 1, 2, peak)
            last_wall = rows[batch].get("wall_s", 0.0)
            if rows[batch]["status"] != "ok":
                break
        speed["sweep"][key] = rows
        fitted = [b for b, r in rows.items() if r.get("status") == "ok"]
        stop = next((r["status"] for r in rows.values() if r.get("status") != "ok"), None)
        speed["largest_batch"][key] = {
            "batch": max(fitted) if fitted else None,
            "next_batch": stop or f"not tried (sweep ends at {max(rows)})"}
        update_best(speed)
        save()


def same_lever(winner: str, checkpointing: bool) -> str | None:
    """The lever whose overrides are `winner`'s settings with gradient checkpointing on or off:
    the winner itself, or (sdpa and gradient_checkpointing differ in checkpointing only) the
    other one of those two; None for the other levers."""
    if checkpointing == (winner == "gradient_checkpointing"):
        return winner
    pair = {"sdpa": "gradient_checkpointing", "gradient_checkpointing": "sdpa"}
    return pair.get(winner)


def update_best(speed: dict[str, Any]) -> None:
    """The fastest configuration measured so far that keeps the recipe: the headline
    tokens/s and MFU."""
    measured = [(name, r) for name, r in speed["levers"].items()
                if r.get("status") == "ok" and r.get("recipe", True)]
    measured += [(f"{key} batch {b}", r) for key, rows in speed.get("sweep", {}).items()
                 for b, r in rows.items() if r.get("status") == "ok" and "from" not in r]
    if measured:
        name, best = max(measured, key=lambda item: item[1]["tokens_per_s"])
        speed["best"] = {"config": name, **{k: best[k] for k in (
            "tokens_per_s", "samples_per_s", "mfu", "peak_memory_mib", "mean_batch_size",
            "step_s", "non_embedding_params", "attention")}}


# --- c. FSDP2: 30 steps, kill, resume, export ---

class StepLog(L.Callback):
    """Appends [step, loss] per training step to `<path>.rank<r>.jsonl` (the loss as a float:
    JSON keeps every bit); with `kill_at`, rank zero SIGKILLs its whole process group (every
    rank) once every rank has written that step (a barrier first: without it rank zero could
    kill a partner that had not yet logged the step, and the resume check would compare one
    rank only)."""

    def __init__(self, path: str, kill_at: int | None = None) -> None:
        self.path, self.kill_at = path, kill_at

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        with open(f"{self.path}.rank{trainer.global_rank}.jsonl", "a") as fh:
            fh.write(json.dumps([trainer.global_step, float(loss)]) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if self.kill_at is not None and trainer.global_step >= self.kill_at:
            trainer.strategy.barrier("step_log_kill")
            if trainer.is_global_zero:
                os.killpg(os.getpgrp(), signal.SIGKILL)


def read_steps(prefix: Path, world: int) -> list[dict[int, float]]:
    out = []
    for rank in range(world):
        path = Path(f"{prefix}.rank{rank}.jsonl")
        lines = path.read_text().splitlines() if path.exists() else []
        out.append({int(s): float(v) for s, v in map(json.loads, lines)})
    return out


def fsdp_command(shape: Shape, manifest: Path, work: Path, name: str, world: int,
                 kill_at: int | None, resume: bool) -> list[str]:
    run = work / name
    overrides = [
        *shape.fsdp_model, f"trainer={shape.fsdp_trainer}",
        *data_overrides(manifest, work / "data", shape.fsdp_batch, shape.fsdp_max_length,
                        shape.negatives, workers=0),
        # Not the default experiment's fused AdamW: Lightning refuses it with clipping under
        # bf16-mixed (NOT_RECIPE).
        "optimizer=adamw",
        "model.gradient_checkpointing=true", f"trainer.max_steps={shape.fsdp_steps}",
        "final_validate=false", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "callbacks.progress=null",
        f"callbacks.checkpoint.every_n_train_steps={shape.fsdp_every}",
        f"hydra.run.dir={run}",
        "+callbacks.step_log._target_=gpu_check.StepLog",
        f"+callbacks.step_log.path={work / name}_steps",
    ]
    if shape.fsdp_trainer == "fsdp":
        overrides.append(f"trainer.devices={world}")
    if kill_at is not None:
        overrides.append(f"+callbacks.step_log.kill_at={kill_at}")
    if resume:
        overrides.append(f"ckpt_path={work / 'killed'}")
    return [sys.executable, str(ROOT / "src/f2llm/train.py"), *overrides]


def run_logged(command: list[str], log_path: Path, timeout: float) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "scripts"), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    with log_path.open("w") as fh:
        # Its own process group: the kill reaches every rank and nothing else.
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -9


def gathered_checkpoint(folder: Path, out: Path) -> dict[str, Any]:
    """A sharded (torch.distributed.checkpoint) folder as one state dict, without processes."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(folder, out)
    state = torch.load(out, map_location="cpu", weights_only=True)
    # The step, loops and callbacks are in rank zero's meta.pt (our own file of this run).
    meta = torch.load(folder / "meta.pt", map_location="cpu", weights_only=False)
    return {**state, "global_step": meta.get("global_step")}


def fsdp_section(shape: Shape, manifest: Path, work: Path, device: torch.device,
                 result: dict[str, Any], save: Any) -> None:
    world = torch.cuda.device_count() if device.type == "cuda" else 2
    fsdp: dict[str, Any] = {"trainer": shape.fsdp_trainer, "world_size": world,
                            "steps": shape.fsdp_steps, "checkpoint_every": shape.fsdp_every,
                            "batch_size": shape.fsdp_batch, "max_length": shape.fsdp_max_length,
                            "model": shape.fsdp_model[0]}
    result["fsdp"] = fsdp
    work.mkdir(parents=True, exist_ok=True)
    # A hung rank (a collective that never completes) must not use up the time the check has.
    timeout = shape.fsdp_timeout_s
    # The reference: a full uninterrupted run, or (toy: one process start fewer) the killed
    # run itself, uninterrupted up to its kill, against the steps the resumed run replays.
    runs = {"full": (None, False)} if shape.fsdp_full_run else {}
    runs.update(killed=(shape.fsdp_kill_at, False), resumed=(None, True))
    fsdp["reference"] = "full" if shape.fsdp_full_run else "killed (steps before the kill)"
    for name, (kill_at, resume) in runs.items():
        command = fsdp_command(shape, manifest, work, name, world, kill_at, resume)
        if name == "resumed":
            fsdp["command"] = shlex.join(["python", *command[1:]])
        start = time.perf_counter()
        rc = run_logged(command, work / f"{name}.log", timeout)
        fsdp[f"{name}_s"] = time.perf_counter() - start
        fsdp[f"{name}_exit"] = rc
        log(f"fsdp {name}: exit {rc} in {fsdp[f'{name}_s']:.0f} s")
        if (rc != 0) != (name == "killed"):
            fsdp["error"] = (work / f"{name}.log").read_text()[-3000:]
            log(f"fsdp {name} failed:\n{fsdp['error']}")
            save()
            return
    killed = read_steps(work / "killed_steps", world)
    full = read_steps(work / "full_steps", world) if shape.fsdp_full_run else killed
    resumed = read_steps(work / "resumed_steps", world)
    fsdp["killed_after_step"] = max(killed[0]) if killed[0] else None
    fsdp["resumed_from_step"] = min(resumed[0]) - 1 if resumed[0] else None
    diffs, equal, compared = [], True, 0
    for rank in range(world):
        for step, loss in resumed[rank].items():
            if step not in full[rank]:
                continue
            ref = full[rank][step]
            compared += 1
            equal &= loss == ref
            diffs.append((abs(loss - ref), abs(loss - ref) / max(abs(ref), 1e-12)))
    max_abs = max((d[0] for d in diffs), default=None)
    max_rel = max((d[1] for d in diffs), default=None)
    fsdp["resume"] = {
        "compared_steps": compared, "equal_bitwise": bool(equal and compared),
        "max_abs_diff": max_abs, "max_rel_diff": max_rel,
        "tolerance_rel": BF16_REL_TOLERANCE,
        "tolerance_reason": "one bf16 rounding (2^-8 relative): reduction order in GPU kernels",
        "ok": bool(compared) and (equal or (max_rel is not None
                                            and max_rel <= BF16_REL_TOLERANCE)),
        "losses_reference": [full[0][s] for s in sorted(full[0])],
        "losses_resumed": [resumed[0][s] for s in sorted(resumed[0])],
    }
    # The resumed run's: a run that was killed and resumed still exports the right weights.
    last = work / "resumed" / "checkpoints" / "last.ckpt"
    fsdp["checkpoint"] = {"sharded": last.is_dir(),
                          "files": sorted(p.name for p in last.iterdir()) if last.is_dir()
                          else [last.name]}
    save()
    fsdp["export"] = export_equality(shape, manifest, work, last, device)
    # The export is written at the end of fit: the checkpoint must be of the last step.
    fsdp["export"]["ok"] &= fsdp["export"]["step"] == shape.fsdp_steps
    save()


def export_equality(shape: Shape, manifest: Path, work: Path, checkpoint: Path,
                    device: torch.device) -> dict[str, Any]:
    """The export (SentenceTransformer) against the final sharded checkpoint, gathered into the
    training model, on the same texts and device, both float32."""
    from hydra.utils import instantiate
    from sentence_transformers import SentenceTransformer

    state = gathered_checkpoint(checkpoint, work / "gathered.pt")
    cfg = bench.compose_cfg([*shape.fsdp_model, *data_overrides(
        manifest, work / "data", shape.fsdp_batch, shape.fsdp_max_length, shape.negatives)],
        work / "export_check")
    encoder = instantiate(cfg.model)
    prefix = "encoder."
    encoder.load_state_dict({k.removeprefix(prefix): v for k, v in state["state_dict"].items()
                             if k.startswith(prefix)})
    encoder.to(device)
    import pyarrow.parquet as pq

    texts = pq.read_table(manifest.parent / "synthetic.parquet").column("query").to_pylist()[:32]
    texts = [t[: 8 * shape.fsdp_max_length] for t in texts]
    ours = encoder.encode(texts, batch_size=8, normalize=True)
    model = SentenceTransformer(str(work / "resumed" / "export"), device=str(device),
                                model_kwargs={"dtype": torch.float32})
    theirs = torch.as_tensor(model.encode(texts, batch_size=8, convert_to_numpy=True))
    diff = (ours - theirs).abs().max().item()
    cosine = torch.nn.functional.cosine_similarity(ours, theirs).min().item()
    return {"loads": True, "texts": len(texts), "step": state.get("global_step"),
            "max_abs_diff": diff, "min_cosine": cosine, "tolerance_abs": 1e-4,
            "ok": diff <= 1e-4}


# --- d. prune the 0.6B to 80M, KD step times ---

def prune_section(shape: Shape, base_data: list[str], work: Path, result: dict[str, Any],
                  save: Any) -> None:
    from hydra.utils import instantiate

    from f2llm.export import export_sentence_transformers

    prune: dict[str, Any] = {"experiment": shape.prune_experiment, "target": shape.prune_target,
                             "calibration_texts": shape.prune_calibration}
    result["prune"] = prune
    teacher_dir = work / "teacher"
    cfg = bench.compose_cfg([*shape.prune_model, *base_data], work / "teacher_build")
    L.seed_everything(0, verbose=False)
    encoder = instantiate(cfg.model)  # random init at the 0.6B shape: student and teacher
    export_sentence_transformers(encoder, teacher_dir)
    prune["source_parameters"] = sum(p.numel() for p in encoder.backbone.parameters())
    del encoder
    common = [f"experiment={shape.prune_experiment}", *base_data, f"trainer={shape.trainer}",
              f"model.pretrained={teacher_dir}", f"model.max_length={shape.max_length}",
              f"callbacks.pruning.calibration_texts={shape.prune_calibration}",
              "callbacks.pruning.save_dir=null", "optimizer=adamw", *shape.prune_overrides]
    teacher = [f"teacher.path={teacher_dir}", f"teacher.cache_dir={work / 'teacher_cache'}"]
    modes = {"no_kd": ["~teacher"], "online": [*teacher, "teacher.mode=online"],
             "cached_fill": [*teacher, "teacher.mode=cached"],
             "cached": [*teacher, "teacher.mode=cached"]}
    prune["kd"] = {}
    for name, overrides in modes.items():
        out_dir = work / f"prune_{name}"
        # The pruning callback as the experiment composes it: the point of section d.
        cfg = bench.variant(bench.compose_cfg([*common, *overrides], out_dir, keep=("pruning",)),
                            out_dir, shape.warmup + shape.steps)
        try:
            out = train_timed(cfg, shape.warmup, shape.steps)
        except Exception as e:  # a failed mode is a result, not a crash
            traceback.print_exc()
            prune["kd"][name] = {"status": "error", "error": f"{type(e).__name__}: {e}"[:500]}
            save()
            continue
        prune["kd"][name] = {"status": "ok", "step_s": out["step_s"],
                             "samples_per_s": out["samples_per_s"],
                             "parameters": out["params"],
                             "peak_memory_mib": out["peak_memory_mib"],
                             **({"teacher_cache_hit_rate": out["teacher_cache_hit_rate"]}
                                if "teacher_cache_hit_rate" in out else {})}
        prune["parameters"] = out["params"]
        log(f"prune/{name}: {out['step_s'] * 1000:.0f} ms/step, {out['params']:,} parameters")
        save()
    kd = prune["kd"]
    if all(kd.get(k, {}).get("status") == "ok" for k in ("no_kd", "online", "cached")):
        base = kd["no_kd"]["step_s"]
        prune["step_time_vs_no_kd"] = {"online": kd["online"]["step_s"] / base,
                                       "cached": kd["cached"]["step_s"] / base}
    save()


# --- e. precision ---

def precision_section(shape: Shape, device: torch.device) -> dict[str, Any]:
    """Section e (module docstring)."""
    from hydra.utils import instantiate

    from f2llm.model.encoder import default_attention
    from f2llm.pruning.importance import encoder_importance

    out: dict[str, Any] = {
        "flash_attn_installed": importlib.util.find_spec("flash_attn") is not None,
        "auto": {p: default_attention(p) for p in ("bf16-mixed", "32-true")}}
    cfg = compose_train([*shape.model, "model.attn_implementation=sdpa"])
    torch.manual_seed(0)
    sdpa = instantiate(cfg.model).to(device)
    picked = default_attention("bf16-mixed")
    texts = [f"text {i}: " + "word " * (1 + 37 * i % shape.max_length) for i in range(16)]
    reference = sdpa.encode(texts)
    kernel = sdpa
    if picked != "sdpa":
        kernel = instantiate(cfg.model).to(device)
        kernel.load_state_dict(sdpa.state_dict())
        kernel.backbone.set_attn_implementation(picked)
    out["encode"] = {"attention": picked, "weights": str(next(kernel.parameters()).dtype)}
    try:
        got = kernel.encode(texts)
        cosine = torch.nn.functional.cosine_similarity(got, reference).min().item()
        importance = encoder_importance(kernel, texts, batch_size=8, progress=False)
        out["encode"].update(ok=True, min_cosine_vs_sdpa=cosine,
                             calibration_finite=bool(torch.isfinite(importance.neurons).all()))
    except Exception as err:  # a kernel that refuses its inputs is the finding
        out["encode"].update(ok=False, error=f"{type(err).__name__}: {err}"[:500])
    rotary = sdpa.backbone.rotary_emb
    position = torch.tensor([[sdpa.backbone.config.max_position_embeddings - 1]], device=device)
    x = torch.zeros(1, 1, 1, device=device)
    cos32, _ = rotary(x, position)
    sdpa.to(torch.bfloat16)
    cos16, _ = rotary(x.bfloat16(), position)
    out["rotary"] = {"inv_freq_dtype": str(rotary.inv_freq.dtype),
                     "position": int(position), "max_abs_cos_diff_vs_float32":
                     (cos16.float() - cos32.to(torch.bfloat16).float()).abs().max().item()}
    out["ok"] = (out["encode"].get("ok", False) and out["rotary"]["inv_freq_dtype"]
                 == "torch.float32")
    return out


# --- report ---

def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                  "cuda": torch.version.cuda}
    for name in ("lightning", "transformers", "sentence_transformers", "hydra", "omegaconf",
                 "peft", "pyarrow", "flash_attn"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # absent is a fact to report
            out[name] = None
    return out


def fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# GPU check, {result['date']}", "",
             f"- Machine: {result['machine']}", f"- Mode: {result['mode']}",
             f"- Command: `{result['command']}` ({fmt(result.get('seconds'), '.0f')} s)",
             f"- Versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}"]
    peak = result.get("peak")
    if peak:
        lines.append(f"- Matmul peak ({peak['dtype']}, {peak['n']}^3, best of {peak['reps']}): "
                     f"{peak['flops_per_s'] / 1e12:.1f} TFLOP/s")
    lines += [f"- {MFU_FORMULA}", ""]
    speed = result.get("speed")
    if speed:
        lines += ["## Speed levers", "", "| config | status | tokens/s | samples/s | MFU | "
                  "peak memory MiB | step s |", "|---|---|---|---|---|---|---|"]
        rows = list(speed["levers"].items())
        rows += [(f"{k} batch {b}", r) for k, sweep in speed.get("sweep", {}).items()
                 for b, r in sweep.items() if "from" not in r]
        for name, r in rows:
            if r.get("status") == "ok":
                lines.append(f"| {name} | ok | {r['tokens_per_s']:.0f} | "
                             f"{r['samples_per_s']:.1f} | {r['mfu']:.1%} | "
                             f"{r['peak_memory_mib']:.0f} | {r['step_s']:.3f} |")
            else:
                lines.append(f"| {name} | {r.get('status')} | {r.get('reason', '')[:80]} "
                             "| | | | |")
        lines.append("")
        if speed.get("best"):
            b = speed["best"]
            lines.append(f"Best: {b['config']}, {b['tokens_per_s']:.0f} tokens/s, MFU "
                         f"**{b['mfu']:.1%}**, winner lever: {speed.get('winner')}; largest "
                         f"batch: {json.dumps(speed.get('largest_batch'))}")
        lines.append("")
    fsdp = result.get("fsdp")
    if fsdp:
        lines += ["## FSDP2", "", f"- `{fsdp.get('command', '')}`",
                  f"- world size {fsdp['world_size']}, {fsdp['steps']} steps, killed after step "
                  f"{fsdp.get('killed_after_step')}, resumed from step "
                  f"{fsdp.get('resumed_from_step')}"]
        if "resume" in fsdp:
            r = fsdp["resume"]
            lines.append(f"- resume: {r['compared_steps']} step losses compared with the "
                         f"{fsdp['reference']} run, bitwise equal "
                         f"{r['equal_bitwise']}, max rel diff {fmt(r['max_rel_diff'])}, "
                         f"ok {r['ok']}")
        if "export" in fsdp:
            e = fsdp["export"]
            lines.append(f"- export: SentenceTransformer loads it; max |diff| "
                         f"{fmt(e['max_abs_diff'])}, min cosine {fmt(e['min_cosine'], '.7f')}, "
                         f"ok {e['ok']}")
        if "error" in fsdp:
            lines.append("- error: see gpu_check.json")
        lines.append("")
    precision = result.get("precision")
    if precision:
        e, r = precision["encode"], precision["rotary"]
        lines += ["## Precision", "",
                  f"- flash-attention installed: {precision['flash_attn_installed']}; "
                  f"`attn_implementation: auto` picks {precision['auto']}",
                  f"- encode and pruning calibration with {e['attention']} on {e['weights']} "
                  f"weights: ok {e.get('ok')}, min cosine vs sdpa "
                  f"{fmt(e.get('min_cosine_vs_sdpa'), '.5f')}"
                  + (f", error {e['error']}" if "error" in e else ""),
                  f"- rotary frequencies after casting the model to bf16: {r['inv_freq_dtype']}; "
                  f"cos at position {r['position']} differs from float32's by "
                  f"{fmt(r['max_abs_cos_diff_vs_float32'])} beyond the output's bf16 rounding", ""]
    prune = result.get("prune")
    if prune:
        lines += ["## Prune + KD", "", f"- {prune.get('source_parameters', 0):,} -> "
                  f"{prune.get('parameters', 0):,} parameters ({prune['target']})", "",
                  "| KD | step s | samples/s | teacher cache hit rate |", "|---|---|---|---|"]
        for name, r in prune.get("kd", {}).items():
            if r.get("status") == "ok":
                lines.append(f"| {name} | {r['step_s']:.3f} | {r['samples_per_s']:.1f} | "
                             f"{fmt(r.get('teacher_cache_hit_rate'), '.2f')} |")
            else:
                lines.append(f"| {name} | {r.get('status')} | | |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    # The imports' objects (torch's, Lightning's, transformers': hundreds of thousands) are
    # never garbage: frozen, they are left out of the collection between configurations
    # (`free_memory`: a quarter of a second each on a CPU) and of the one at exit.
    gc.freeze()
    exit_without_final_collection()  # what main makes after this point
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toy", action="store_true", help="CPU-sized shapes (the test)")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="default: docs/ (GPU); logs/gpu_check_toy/ with --toy, so a toy "
                    "report never stands in docs/ for a GPU one")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp)")
    ap.add_argument("--budget-s", type=float, default=270.0,
                    help="after this many seconds, batch sweeps stop")
    ap.add_argument("--sections", default="peak,speed,precision,fsdp,prune,sweep")
    args = ap.parse_args()
    shape = TOY if args.toy else FULL
    if args.out_dir is None:
        args.out_dir = ROOT / ("logs/gpu_check_toy" if args.toy else "docs")
    sections = set(args.sections.split(","))
    device = torch.device("cuda" if torch.cuda.is_available() and not args.toy else "cpu")
    if not args.toy and device.type != "cuda":
        raise SystemExit("no CUDA device: run with --toy on a CPU")
    clock = Clock(args.budget_s)
    machine = f"{bench.cpu_name()}, {os.cpu_count()} CPUs"
    if device.type == "cuda":
        machine += ", " + ", ".join(torch.cuda.get_device_name(i)
                                    for i in range(torch.cuda.device_count()))
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine,
        "mode": "toy (CPU)" if args.toy else "gpu", "device": str(device),
        "command": shlex.join(["python", "scripts/gpu_check.py", *sys.argv[1:]]),
        "versions": versions(), "mfu_formula": MFU_FORMULA, "shape": asdict(shape),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        result["seconds"] = clock.elapsed
        (args.out_dir / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out_dir / "gpu_check.md").write_text(markdown(result) + "\n")

    with tempfile.TemporaryDirectory(prefix="f2llm-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        manifest = write_corpus(work / "corpus", shape.records, shape.negatives,
                                shape.max_length)
        # Toy: tokenizing in this process costs less than starting loader workers.
        base_data = data_overrides(manifest, work / "data", shape.batch, shape.max_length,
                                   shape.negatives, workers=0 if args.toy else 2)
        base = [*shape.model, f"trainer={shape.trainer}", *base_data]
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False  # fp32 comparisons stay fp32
        if "peak" in sections:
            log("a. matmul peak")
            result["peak"] = peak_section(shape, device, args.toy)
            log(f"peak {result['peak']['flops_per_s'] / 1e12:.2f} TFLOP/s")
            save()
        peak = result.get("peak", {}).get("flops_per_s", float("nan"))
        if "speed" in sections:
            log("b. speed levers")
            speed_section(shape, base, work / "speed", peak, result, save)
        if "precision" in sections:
            log("e. precision")
            result["precision"] = precision_section(shape, device)
            save()
        if "fsdp" in sections:
            log("c. FSDP2 kill/resume/export")
            fsdp_section(shape, manifest, work / "fsdp", device, result, save)
        if "prune" in sections:
            log("d. prune + KD")
            prune_section(shape, base_data, work / "prune", result, save)
        if "sweep" in sections:
            log("b. largest batch")
            sweep_section(shape, base, work / "speed", clock, peak, result, save)
    save()
    log(f"done in {clock.elapsed:.0f} s: {args.out_dir / 'gpu_check.json'}")
    print(markdown(result))


if __name__ == "__main__":
    main()
