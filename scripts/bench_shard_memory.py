"""Peak host memory per rank of building and sharding a model under the sharded strategy.

    python scripts/bench_shard_memory.py [--model f2llm_1_7b] [--ranks 2] [--rounds 1]
                                         [--json out.json]

Each of `--ranks` CPU processes (gloo, the CPU twin of `trainer=fsdp`) builds `model=<model>`
(random init) and shards it over all of them, the way training does (`f2llm.parallel`'s
`shard_and_fill`), in two ways:
  - whole: the model built whole in every process, then sharded (`empty_init=False`: what
    every rank did before the meta-device build);
  - empty: built on the meta device, sharded, then each rank fills its own rows
    (`empty_init=True`: what `train()` does now under the sharded strategy).
A fresh set of processes per way and round (rounds alternate the order); each rank reports
its peak resident set size (`ru_maxrss`) once its shard is filled, and the import baseline
(the peak before the build). Prints the peak per rank and the ratio empty / whole.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from _common import exit_without_final_collection, machine

from f2llm.compose import compose_train


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rank(rank: int, world: int, model: str, empty: bool, out: str) -> None:
    import torch
    import torch.distributed as dist
    from hydra.utils import get_class, instantiate
    from torch.distributed.device_mesh import init_device_mesh

    from f2llm.parallel import shard_and_fill

    exit_without_final_collection()  # each rank's process
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank,
                            world_size=world)
    cfg = compose_train([f"model={model}", "trainer=fsdp_sim"])
    baseline = peak_mib()
    start = time.perf_counter()
    torch.manual_seed(0)
    encoder = instantiate(cfg.model, precision=cfg.trainer.precision, empty_init=empty)
    layers = [get_class(c.path) for c in cfg.trainer.strategy.layer_classes]
    mesh = init_device_mesh("cpu", (world,))
    shard_and_fill(encoder, mesh, layers, torch.device("cpu"))
    seconds = time.perf_counter() - start
    local = sum(p.to_local().numel() for p in encoder.parameters())
    report = {"rank": rank, "peak_mib": peak_mib(), "baseline_mib": baseline,
              "seconds": seconds, "local_parameters": local,
              "parameters": sum(p.numel() for p in encoder.parameters())}
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


def run(model: str, world: int, empty: bool) -> list[dict]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="bench_shard_memory_") as out:
        mp.start_processes(_rank, args=(world, model, empty, out), nprocs=world,
                           start_method="spawn")
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


def main() -> None:
    exit_without_final_collection()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="f2llm_1_7b")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for round_ in range(args.rounds):
        order = (False, True) if round_ % 2 == 0 else (True, False)
        for empty in order:
            ranks = run(args.model, args.ranks, empty)
            way = "empty" if empty else "whole"
            for r in ranks:
                rows.append({"round": round_, "way": way, **r})
                print(f"round {round_} {way:5s} rank {r['rank']}: peak {r['peak_mib']:8.0f} MiB "
                      f"(imports {r['baseline_mib']:.0f} MiB), {r['seconds']:.1f} s, "
                      f"{r['local_parameters']:,} of {r['parameters']:,} parameters here",
                      flush=True)
    peak = {way: max(r["peak_mib"] for r in rows if r["way"] == way)
            for way in ("whole", "empty")}
    ratio = peak["empty"] / peak["whole"]
    print(f"peak RSS per rank: whole {peak['whole']:.0f} MiB, empty {peak['empty']:.0f} MiB, "
          f"ratio {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps({
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
            "command": " ".join(["python", *sys.argv]), "rows": rows, "peak_mib": peak,
            "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
