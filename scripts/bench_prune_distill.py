"""Prune -> distill on the embedded default, measured: what pruning costs, what KD recovers,
and what KD costs per step.

    python scripts/bench_prune_distill.py logs/train/runs/<default run>/export [--steps 200]

(a) Right after pruning the export to `model=tiny_half` (no training): held-out scores of
    activation importance vs. first-k, and of activation importance with the hidden channels
    kept as the first ones (`callbacks.pruning.hidden=prefix`, the teacher's MRL prefix).
(b) After `--steps` stage-2 steps from the activation-pruned model: with KD (teacher = the
    unpruned export) vs. without, same seed, same batches; for both hidden channel choices.
(c) Time per training step (steps 20..N, no validation): no KD, KD through a cold teacher cache
    (first sight of every text), KD through a warm cache (a second run over the same batches),
    and KD with the online teacher.
(b) again with `--seeds A B ...`: the four (b) runs once per training seed (batch order; the
    pruned model is the same), so KD - no KD is a paired difference with a spread.
(c) alone with `--timing-rounds N`: no KD and KD through the warm cache, in the experiment's own
    settings, N times each, alternating which goes first (AB, BA, ...) so that the machine's
    drift cancels; the median of the per-round ratios. Nothing else runs.
(c) alone with `--interleaved N`: one run, one model, N batches each trained twice in a row,
    once with KD through the warm cache and once without (which goes first alternates by
    pair), so both sides of each ratio see the same batch, the same weights' shapes and the
    same machine moment; the time of each step from batch start to batch end (forward,
    backward, optimiser step); the median of the per-pair ratios and the ratio of the sums.
`--lookup N ...`: only the warm cache's own per-step work (`row_keys` + `EmbeddingCache.get`) for
    N random 24-token texts of 128 dims, ms per step; no model, no export needed (pass any path).
Prints markdown tables; `--json` writes the numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L
import torch
from _common import ROOT, alternating_rounds, exit_without_final_collection, machine
from _step_timer import StepTimer
from hydra.utils import instantiate

from f2llm.compose import compose_train
from f2llm.data import F2LLMDataModule
from f2llm.evaluation.embedders import EncoderEmbedder
from f2llm.evaluation.heldout import HeldoutEvaluator
from f2llm.pruning import encoder_importance, prune_backbone
from f2llm.train import train


def stage2_overrides(steps: int) -> list[str]:
    """`steps` stage-2 steps, validated once at the end; no export, no periodic checkpoints."""
    return [f"trainer.max_steps={steps}", f"data.stages.0.steps={steps}",
            f"trainer.val_check_interval={steps}", "callbacks.export=null",
            "callbacks.checkpoint=null"]


def folder(run_name: str) -> str:
    return run_name.replace(" ", "_").replace(",", "")


def compose_cfg(export: Path, out: Path, overrides: list[str]):
    return compose_train(["experiment=prune_distill_tiny", f"model.pretrained={export}",
                          "callbacks.progress=null", "trainer.enable_progress_bar=false",
                          *overrides], out)


def main() -> None:
    exit_without_final_collection()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "logs" / "bench_prune_distill")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="training seeds for the (b) runs (default: the config's seed only)")
    ap.add_argument("--timing-rounds", type=int, default=0,
                    help="only (c): this many alternating rounds of no KD / KD, warm cache")
    ap.add_argument("--interleaved", type=int, default=0,
                    help="only (c): this many batches, each trained with and without KD")
    ap.add_argument("--lookup", type=int, nargs="+", default=None,
                    help="only time the warm cache lookup for this many texts per step")
    args = ap.parse_args()
    export = args.export.resolve()
    if args.lookup:
        for n in args.lookup:
            print(f"{n} texts: {lookup_ms(n):.1f} ms per step (row_keys + EmbeddingCache.get)")
        return
    if args.timing_rounds:
        timing_rounds(export, args)
        return
    if args.interleaved:
        interleaved(export, args)
        return
    rows: dict[str, dict] = {}

    # (a) pruning alone.
    cfg = compose_cfg(export, args.out / "a", [])
    config_seed = cfg.seed
    evaluator = HeldoutEvaluator(instantiate(cfg.data.corpus)())
    teacher_encoder = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, encoder=teacher_encoder)
    datamodule.setup("fit")
    texts = datamodule.calibration_texts(cfg.callbacks.pruning.calibration_texts, cfg.seed)
    target = dict(cfg.callbacks.pruning.target.shape)
    rows["unpruned (teacher)"] = evaluator(EncoderEmbedder(teacher_encoder)).metrics
    for method, hidden in (("activation", "method"), ("first_k", "method"),
                           ("activation", "prefix")):
        student = copy.deepcopy(teacher_encoder)
        importance = encoder_importance(student, texts) if method == "activation" else None
        prune_backbone(student.backbone, target, importance, method=method, hidden=hidden)
        name = f"{method}{', prefix hidden' if hidden == 'prefix' else ''}"
        rows[f"pruned, {name}, no training"] = evaluator(EncoderEmbedder(student)).metrics

    # (b) + (c): stage 2 from the pruned model, with and without KD; step times.
    base = stage2_overrides(args.steps)
    cache = args.out / "teacher_cache"
    by_activation = "callbacks.pruning.hidden=method"  # the experiments' default is prefix
    runs = {
        "stage 2, no KD": ["~teacher", by_activation],
        "stage 2, KD, cold cache": [f"teacher.cache_dir={cache}", by_activation],
        "stage 2, KD, warm cache": [f"teacher.cache_dir={cache}", by_activation],
        "stage 2, KD, online teacher": ["teacher.mode=online", by_activation],
        "stage 2, prefix hidden, no KD": ["~teacher", "callbacks.pruning.hidden=prefix"],
        "stage 2, prefix hidden, KD, warm cache": [f"teacher.cache_dir={cache}",
                                                    "callbacks.pruning.hidden=prefix"],
    }
    if cache.exists():
        shutil.rmtree(cache)
    times = {}
    for name, extra in runs.items():
        cfg = compose_cfg(export, args.out / folder(name),
                          base + extra)
        timer = StepTimer()
        metrics = _train_with(cfg, timer)
        times[name] = timer.ms_per_step()
        rows[name] = metrics
        if args.json:  # so far, in case a later run fails
            args.json.write_text(json.dumps({"scores": rows, "ms_per_step": times}, indent=2))
    result = {"date": str(date.today()), "machine": f"{machine()}, torch {torch.__version__}",
              "steps": args.steps, "scores": rows, "ms_per_step": times}
    if args.seeds:
        by_seed: dict[str, dict[int, dict]] = {name: {} for name in QUALITY_RUNS}
        result["seeds"] = by_seed
        for seed in args.seeds:
            for name in QUALITY_RUNS:
                if seed == config_seed:  # measured above
                    by_seed[name][seed] = rows[name]
                    continue
                out = args.out / f"seed{seed}" / folder(name)
                cfg = compose_cfg(export, out, [*base, *runs[name], f"seed={seed}"])
                by_seed[name][seed] = _train_with(cfg, StepTimer())
                if args.json:  # so far
                    args.json.write_text(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print_table(result)


def lookup_ms(n: int, length: int = 24, dim: int = 128, repeats: int = 10) -> float:
    """ms for one warm-cache step's lookup of `n` texts (all hits), in 8 chunks."""
    import tempfile

    import numpy as np

    from f2llm.model.frozen import EmbeddingCache, row_keys

    g = torch.Generator().manual_seed(0)
    chunks = [{"input_ids": torch.randint(0, 150_000, (n // 8, length), generator=g),
               "attention_mask": torch.ones(n // 8, length, dtype=torch.long)} for _ in range(8)]
    restore = torch.randperm(n // 8 * 8, generator=g)
    with tempfile.TemporaryDirectory() as folder:
        cache = EmbeddingCache(folder, "bench", dim)
        cache.put(row_keys(chunks, restore), np.random.default_rng(0).normal(
            size=(len(restore), dim)).astype(np.float32))
        cache.flush()
        cache = EmbeddingCache(folder, "bench", dim)  # as a later run: every shard memory-mapped
        start = time.perf_counter()
        for _ in range(repeats):
            _, missing = cache.get(row_keys(chunks, restore))
        assert not missing
        return 1000 * (time.perf_counter() - start) / repeats


def timing_rounds(export: Path, args: argparse.Namespace) -> None:
    base = stage2_overrides(args.steps)
    cache = args.out / "teacher_cache"
    if cache.exists():
        shutil.rmtree(cache)
    runs = {"no KD": ["~teacher"], "KD, warm cache": [f"teacher.cache_dir={cache}"]}
    # Fill the cache: every text of these batches seen once.
    _train_with(compose_cfg(export, args.out / "fill", base + runs["KD, warm cache"]), StepTimer())
    rounds = iter(range(2 * args.timing_rounds))  # two runs per round, in alternating order

    def timed(name: str) -> float:
        timer = StepTimer()
        out = args.out / f"round{next(rounds) // 2}" / folder(name)
        _train_with(compose_cfg(export, out, base + runs[name]), timer)
        return timer.ms_per_step()

    def report(r: int, name: str, times: dict[str, list[float]]) -> None:
        if all(len(t) == r + 1 for t in times.values()):  # the round's second run
            print(f"round {r}: " + ", ".join(f"{n} {t[-1]:.1f} ms/step"
                                             for n, t in times.items()), flush=True)

    times = alternating_rounds({name: (lambda n=name: timed(n)) for name in runs},
                               args.timing_rounds, report)
    ratios = [kd / plain for kd, plain in zip(times["KD, warm cache"], times["no KD"], strict=True)]
    result = {"date": str(date.today()), "steps": args.steps, "ms_per_step": times,
              "ratios": ratios, "median_ratio": statistics.median(ratios)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print("| round | no KD ms/step | KD, warm cache ms/step | ratio |")
    print("|---|---|---|---|")
    for r, ratio in enumerate(ratios):
        print(f"| {r} | {times['no KD'][r]:.1f} | {times['KD, warm cache'][r]:.1f} "
              f"| {ratio:.3f}x |")
    print(f"\nmedian ratio {result['median_ratio']:.3f}x")


def kd_first(pair: int) -> bool:
    """Whether pair `pair`'s KD step goes first: AB, BA, AB, ... cancels any cost of going
    second (a warm batch) or first."""
    return pair % 2 == 0


class Twice:
    """Every batch of `loader`, twice in a row (Lightning takes any sized iterable)."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return 2 * len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield batch
            yield batch


class TwiceDataModule(F2LLMDataModule):
    """The datamodule, serving every training batch twice in a row (`Twice`)."""

    def train_dataloader(self) -> Twice:
        return Twice(super().train_dataloader())


class KDToggle(L.Callback):
    """With `TwiceDataModule`, turns the module's teacher on for one step of each pair of equal
    batches and off for the other, and times each step from batch start to end."""

    def __init__(self) -> None:
        self.teacher = None
        self.ms: dict[str, dict[int, float]] = {"KD, warm cache": {}, "no KD": {}}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.teacher is None:
            self.teacher = pl_module.teacher
        pair, second = divmod(batch_idx, 2)
        self.kd = kd_first(pair) != bool(second)
        pl_module.set_teacher(self.teacher if self.kd else None)
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        ms = 1000 * (time.perf_counter() - self.start)
        self.ms["KD, warm cache" if self.kd else "no KD"][batch_idx // 2] = ms
        pl_module.set_teacher(self.teacher)


def pair_ratios(ms: dict[str, dict[int, float]], skip: int) -> list[float]:
    """KD / no KD per pair, for pairs from `skip` on that have both steps."""
    kd, plain = ms["KD, warm cache"], ms["no KD"]
    return [kd[p] / plain[p] for p in sorted(set(kd) & set(plain)) if p >= skip]


def interleaved(export: Path, args: argparse.Namespace, skip: int = 10) -> None:
    n = args.interleaved
    cache = args.out / "teacher_cache"
    if cache.exists():
        shutil.rmtree(cache)
    kd = [f"teacher.cache_dir={cache}"]
    # Fill the cache with every text of the first n batches (the same sampler, same seed).
    _train_with(compose_cfg(export, args.out / "fill", stage2_overrides(n) + kd), StepTimer())
    cfg = compose_cfg(export, args.out / "interleaved", stage2_overrides(2 * n) + kd + [
        "callbacks.matryoshka_eval=null", f"data._target_={__name__}.TwiceDataModule"])
    toggle = KDToggle()
    train(cfg, callbacks=[toggle])
    cached = toggle.teacher.cache(0)
    ratios = pair_ratios(toggle.ms, skip)
    kd_ms = [toggle.ms["KD, warm cache"][p] for p in range(skip, n)]
    plain_ms = [toggle.ms["no KD"][p] for p in range(skip, n)]
    result = {"date": str(date.today()), "pairs": len(ratios), "skipped_pairs": skip,
              "cache_hits": cached.hits, "cache_misses": cached.misses,
              "median_ms": {"KD, warm cache": statistics.median(kd_ms),
                            "no KD": statistics.median(plain_ms)},
              "median_ratio": statistics.median(ratios),
              "ratio_of_sums": sum(kd_ms) / sum(plain_ms),
              "ratio_quartiles": statistics.quantiles(ratios, n=4), "ms": toggle.ms}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(f"pairs {skip}..{n - 1} ({len(ratios)}), cache hits {cached.hits:,}, "
          f"misses {cached.misses:,}")
    print(f"median ms/step: no KD {result['median_ms']['no KD']:.1f}, KD warm cache "
          f"{result['median_ms']['KD, warm cache']:.1f}")
    q1, _, q3 = result["ratio_quartiles"]
    print(f"KD / no KD per pair: median {result['median_ratio']:.3f}x (quartiles {q1:.3f}, "
          f"{q3:.3f}); sum over pairs {result['ratio_of_sums']:.3f}x")


# The (b) runs: KD vs. no KD for each hidden channel choice.
QUALITY_RUNS = ["stage 2, no KD", "stage 2, KD, warm cache", "stage 2, prefix hidden, no KD",
                "stage 2, prefix hidden, KD, warm cache"]
KD_PAIRS = {"activation hidden": ("stage 2, no KD", "stage 2, KD, warm cache"),
            "prefix hidden": ("stage 2, prefix hidden, no KD",
                              "stage 2, prefix hidden, KD, warm cache")}
METRICS = ["bitext/accuracy", "retrieval/ndcg_at_10", "clustering/v_measure",
           "classification/accuracy"]


def seed_summary(by_seed: dict[str, dict[int, dict]]) -> dict[str, dict[str, tuple]]:
    """Mean and sample std over seeds of every (b) run, and of the paired KD - no KD
    difference per hidden channel choice: {row: {metric: (mean, std, n)}}."""

    def stats(values: list[float]) -> tuple[float, float, int]:
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        return statistics.fmean(values), spread, len(values)

    summary = {name: {k: stats([m[k] for m in runs.values()]) for k in METRICS}
               for name, runs in by_seed.items()}
    for label, (plain, kd) in KD_PAIRS.items():
        seeds = sorted(set(by_seed[plain]) & set(by_seed[kd]))
        summary[f"KD - no KD, {label}"] = {
            k: stats([by_seed[kd][s][k] - by_seed[plain][s][k] for s in seeds]) for k in METRICS}
    return summary


def _train_with(cfg, timer: StepTimer) -> dict[str, float]:
    metrics = train(cfg, callbacks=[timer])
    return {k.removeprefix("val/"): v for k, v in metrics.items() if k.startswith("val/")}


def print_table(result: dict) -> None:
    keys = METRICS
    print(f"| model | {' | '.join(keys)} |")
    print("|---|" + "---|" * len(keys))
    for name, m in result["scores"].items():
        print(f"| {name} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in keys) + " |")
    print()
    base = result["ms_per_step"]["stage 2, no KD"]
    print("| run | ms/step | vs. no KD |")
    print("|---|---|---|")
    for name, ms in result["ms_per_step"].items():
        print(f"| {name} | {ms:.0f} | {ms / base:.2f}x |")
    if result.get("seeds"):
        seeds = sorted({s for runs in result["seeds"].values() for s in runs})
        print(f"\nOver training seeds {seeds} (mean +- sample std):\n")
        print(f"| run | {' | '.join(keys)} |")
        print("|---|" + "---|" * len(keys))
        for name, m in seed_summary(result["seeds"]).items():
            print(f"| {name} | " + " | ".join(f"{m[k][0]:+.4f} +- {m[k][1]:.4f}"
                                                if name.startswith("KD -") else
                                                f"{m[k][0]:.4f} +- {m[k][1]:.4f}"
                                                for k in keys) + " |")


if __name__ == "__main__":
    main()
