"""Does Matryoshka over layers make layer pruning lose less? Measured on the embedded default.

    python scripts/bench_layer_pruning.py [--steps 400] [--depth 4] [--keep 2] \
        [--layers 1 2] [--seeds 42 ...] [--json out.json] [-- common overrides ...]

For each seed, two runs of the embedded default with a `--depth`-layer tiny model and one
`--steps`-step stage 1 (same seed, same batches): without `objective.layers` and with
`objective.layers=--layers`. Each trained encoder is then pruned to `--keep` layers with the
project's pruning (`f2llm.pruning.prune_backbone`: first-k layers, and activation importance
on the stage's calibration texts), without further training, and scored on the held-out sets
(`f2llm.evaluation.heldout.HeldoutEvaluator`). Prints a markdown table of held-out bitext
accuracy at full width and retrieval nDCG@10 before and after pruning; `--json` writes every
metric.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import lightning as L
import torch
from _common import exit_without_final_collection, machine, scratch_dir
from hydra.utils import instantiate

from f2llm.compose import compose_train
from f2llm.evaluation.embedders import EncoderEmbedder
from f2llm.evaluation.heldout import HeldoutEvaluator
from f2llm.pruning import encoder_importance, prune_backbone
from f2llm.train import train

ROOT = Path(__file__).resolve().parents[1]
SCORES = {"bitext": "bitext/accuracy@{width}", "retrieval nDCG@10": "retrieval/ndcg_at_10@{width}"}


class KeepModule(L.Callback):
    """Holds the trained module once fit ends."""

    module: Any = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.module = pl_module


def run_overrides(steps: int, depth: int, seed: int, layers: list[int] | None) -> list[str]:
    stage = f"{{name: stage1, datasets: [gettext_bitext], instructions: false, steps: {steps}}}"
    out = [f"data.stages=[{stage}]", f"trainer.max_steps={steps}",
           # Scored below, on the trained encoder: no validation inside the run.
           f"trainer.val_check_interval={steps + 1}", "final_validate=false",
           f"model.shape.num_hidden_layers={depth}",
           f"seed={seed}", "callbacks.export=null", "callbacks.checkpoint=null",
           "callbacks.progress=null", "trainer.enable_progress_bar=false"]
    if layers:
        out.append(f"objective.layers=[{','.join(map(str, layers))}]")
    return out


def pick(metrics: dict[str, float], width: int) -> dict[str, float]:
    """The table's scores out of `metrics` (keys with or without the `val/` prefix)."""
    flat = {k.removeprefix("val/"): v for k, v in metrics.items()}
    return {name: flat.get(key.format(width=width), float("nan"))
            for name, key in SCORES.items()}


def measure(cfg, keep: int) -> dict[str, dict[str, float]]:
    """Train `cfg`; the held-out metrics of the trained encoder and of its `keep`-layer cuts."""
    holder = KeepModule()
    train(cfg, callbacks=[holder])
    encoder = holder.module.encoder.eval()
    evaluator = HeldoutEvaluator(instantiate(cfg.data.corpus)())
    datamodule = instantiate(cfg.data, encoder=encoder)
    datamodule.setup("fit")
    texts = datamodule.calibration_texts(256, cfg.seed)
    rows = {"unpruned": evaluator(EncoderEmbedder(encoder)).metrics}
    for method in ("first_k", "activation"):
        # The tokenizer shared, not copied: pruning cuts the backbone only, and a copy of the
        # tokenizer's vocabulary took seconds.
        student = copy.deepcopy(encoder, {id(encoder.tokenizer): encoder.tokenizer})
        importance = encoder_importance(student, texts) if method == "activation" else None
        prune_backbone(student.backbone, {"num_hidden_layers": keep}, importance, method=method)
        rows[f"pruned to {keep}, {method}"] = evaluator(EncoderEmbedder(student)).metrics
    return rows


def main() -> None:
    exit_without_final_collection()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--keep", type=int, default=2)
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("overrides", nargs="*", help="after --: common Hydra overrides")
    args = ap.parse_args()
    result: dict[str, Any] = {
        "date": str(date.today()),
        "machine": f"{machine()}, torch {torch.__version__}",
        "args": {k: v for k, v in vars(args).items() if k != "json"}, "runs": {}}
    width = None
    for seed in args.seeds:
        for arm, layers in (("without layers", None), (f"layers {args.layers}", args.layers)):
            cfg = compose_train([*run_overrides(args.steps, args.depth, seed, layers),
                                 *args.overrides],
                                output_dir=scratch_dir("bench_layer_pruning_"))
            width = cfg.model.shape.hidden_size
            result["runs"][f"{arm}, seed {seed}"] = measure(cfg, args.keep)
            if args.json:  # so far, in case a later run fails
                args.json.write_text(json.dumps(result, indent=2))
    names = [*SCORES]
    print(f"| run | model | {' | '.join(names)} |")
    print(f"|---|---|{'---|' * len(names)}")
    for run, rows in result["runs"].items():
        for model, metrics in rows.items():
            scores = pick(metrics, width)
            print(f"| {run} | {model} | {' | '.join(f'{scores[n]:.4f}' for n in names)} |")


if __name__ == "__main__":
    main()
