"""Where a step of the embedded default goes, untrimmed against a trimmed vocabulary.

    python scripts/bench_default.py [--steps 12] [--keep 0] [--json out.json] [-- overrides ...]

Builds the default (`f2llm.train.build`), draws `--steps` stage-1 batches, and trains two
copies of the same initial model on them, one with the full embedding and one with
`f2llm.model.vocab.TrimmedEmbedding`, alternating A and B step by step so that the machine's
drift hits both alike. Each step is timed in parts (forward + loss, backward, AdamW step,
zero_grad), in wall and in process CPU time (on a shared machine CPU time varies less).
`--keep 0` keeps the token ids the training data contains
(`F2LLMDataModule.training_token_ids`: tokenizes every distinct training text once, minutes on
a slow machine); `--keep K` keeps the batches' ids plus random others up to K rows (the step
cost depends on K only).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _common import exit_without_final_collection, scratch_dir

from f2llm.compose import compose_train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
PARTS = ("forward", "backward", "optimizer", "zero_grad")


def main() -> None:
    exit_without_final_collection()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps left out")
    ap.add_argument("--keep", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's choice); 1 makes CPU time a clean measure "
                         "of work on a loaded machine (no threads spinning at barriers)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import torch
    from hydra.utils import instantiate

    import f2llm.train as entry

    if args.threads:
        torch.set_num_threads(args.threads)
    from f2llm.model.vocab import trim_input_embeddings

    cfg = compose_train(args.overrides, scratch_dir("bench_default_"))
    module, dm, _ = entry.build(cfg)
    dm.prepare_data()
    dm.setup("fit")
    batches_it = iter(dm.train_dataloader())
    batches = [next(batches_it) for _ in range(args.steps)]
    vocab = module.encoder.backbone.get_input_embeddings().num_embeddings
    if args.keep:
        used = torch.cat([c["input_ids"].reshape(-1) for b in batches for c in b.chunks])
        rest = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))
        keep = torch.unique(used)
        extra = rest[~torch.isin(rest, keep)][: max(0, args.keep - keep.numel())]
        keep = torch.cat([keep, extra])
    else:
        start = time.perf_counter()
        keep = dm.training_token_ids()
        print(f"training_token_ids: {keep.numel()} ids in {time.perf_counter() - start:.0f} s",
              flush=True)
    models = {"A": module, "B": copy.deepcopy(module)}
    trim_input_embeddings(models["B"].encoder.backbone, keep)
    optimizers = {k: instantiate(cfg.optimizer)(params=[p for p in m.parameters()
                                                         if p.requires_grad])
                  for k, m in models.items()}
    wall = {k: {p: [] for p in PARTS} for k in models}
    cpu = {k: {p: [] for p in PARTS} for k in models}
    losses: dict[str, list[float]] = {k: [] for k in models}

    def step(name: str, batch) -> None:
        m, opt = models[name], optimizers[name]
        marks = [(time.perf_counter(), time.process_time())]
        emb = m.encoder.forward_chunks(batch.chunks, batch.restore)
        loss, _ = m.objective.on_batch(emb, batch, None)
        losses[name].append(float(loss.detach()))
        marks.append((time.perf_counter(), time.process_time()))
        loss.backward()
        marks.append((time.perf_counter(), time.process_time()))
        opt.step()
        marks.append((time.perf_counter(), time.process_time()))
        opt.zero_grad()
        marks.append((time.perf_counter(), time.process_time()))
        if i >= args.skip:
            for j, part in enumerate(PARTS):
                wall[name][part].append(1000 * (marks[j + 1][0] - marks[j][0]))
                cpu[name][part].append(1000 * (marks[j + 1][1] - marks[j][1]))

    for i, batch in enumerate(batches):
        for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
            step(name, batch)
    result = {"rows_trained": {"A": vocab, "B": int(keep.numel())},
              "threads": torch.get_num_threads(), "overrides": args.overrides,
              "load_average": os.getloadavg(),
              # The two train the same model: their losses agree to float rounding.
              "max_loss_difference": max(abs(a - b) for a, b in zip(*losses.values(),
                                                                     strict=True)),
              "wall_ms_median": {k: {p: statistics.median(v[p]) for p in PARTS}
                                 for k, v in wall.items()},
              "cpu_ms_median": {k: {p: statistics.median(v[p]) for p in PARTS}
                                for k, v in cpu.items()}}
    print(f"| part | A: full ({vocab} rows) wall / CPU ms | B: trimmed ({keep.numel()} rows) "
          "wall / CPU ms |\n|---|---|---|")
    for p in (*PARTS, "step"):
        row = []
        for k in models:
            w = (sum(result["wall_ms_median"][k].values()) if p == "step"
                 else result["wall_ms_median"][k][p])
            c = (sum(result["cpu_ms_median"][k].values()) if p == "step"
                 else result["cpu_ms_median"][k][p])
            row.append(f"{w:.1f} / {c:.1f}")
        print(f"| {p} | {row[0]} | {row[1]} |")
    print(f"(step: the sum of the parts' medians) load average {result['load_average']}; "
          f"largest loss difference A - B {result['max_loss_difference']:.2e}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
