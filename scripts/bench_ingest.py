"""Ingest benchmark of the public F2LLM-v2 layouts (docs/benchmarks.md, "Ingesting the public
data").

    python scripts/bench_ingest.py --sizes 500000 2000000 --workdir /tmp/bench_ingest

For each layout (raw, tokenized) and size: writes a synthetic copy with real dataset names from
all three official lists (at least 50 datasets, 24 negatives; `f2llm_v2.synthetic`), then in
fresh processes measures
- pyarrow's plain read of the same files (`pq.read_table` of every file, all columns),
- the corpus build (`build_f2llm_v2_corpus`): rows/s and peak RSS,
- a rebuild call on the built corpus (reuse by fingerprint),
- time from process start to the first training step of `experiment=f2llm_v2_stage2
  model=tiny trainer=cpu` on the built corpus (imports, model, corpus reuse, stored group
  indices, first batch).
The machine may be shared: plain read and build alternate (`--repeats` rounds), each timed in
wall and CPU seconds (the process's, all threads) with the load average before it, and
`--baseline-src <folder>` adds a build by another checkout's `src` in every round (A/B).
Prints one JSON line per measurement and a summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def names_for(count: int) -> list[str]:
    from f2llm.data.sources.f2llm_v2.names import CLASSIFICATION, CLUSTERING, RETRIEVAL

    # Every list represented: all classification names, a third clustering, the rest retrieval
    # (evenly spread over the list: webfaq_*, unpc_*, xcodeeval_*, ...).
    picked = list(CLASSIFICATION[:5]) + list(CLUSTERING[: max(5, count // 10)])
    rest = count - len(picked)
    step = len(RETRIEVAL) / rest
    picked += [RETRIEVAL[int(i * step)] for i in range(rest)]
    return picked


def peak_rss_mib() -> float:
    # VmHWM, not getrusage's ru_maxrss: a child's ru_maxrss starts at its parent's peak on Linux
    # (kept across fork + exec), so it cannot show a child using less than this script.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, folder: str, out: str) -> None:
    """One measurement in this (fresh) process, timed after the imports; prints a JSON line
    with the peak RSS after the imports (`import_rss_mib`) and at the end."""
    import pyarrow.parquet as pq

    if kind in ("build", "reuse"):
        from f2llm.data import build_f2llm_v2_corpus, read_corpus
    import_rss = peak_rss_mib()
    load = os.getloadavg()[0]
    start, cpu = time.perf_counter(), time.process_time()
    if kind == "plain_read":
        rows = 0
        for path in sorted(Path(folder).rglob("*.parquet")):
            table = pq.read_table(path)
            if not path.name.endswith("_corpus.parquet") and path.name != "corpus.parquet":
                rows += table.num_rows
            del table
        result = {"rows": rows}
    elif kind in ("build", "reuse"):
        found = build_f2llm_v2_corpus(folder, out)
        rows = sum(e.num_rows for e in read_corpus(found.train[0].path).datasets.values())
        result = {"rows": rows}
    else:
        raise SystemExit(f"unknown child {kind}")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({**result, "seconds": seconds, "rows_per_s": result["rows"] / seconds,
                      "cpu_s": cpu, "load": load, "import_rss_mib": import_rss,
                      "peak_rss_mib": peak_rss_mib()}))


def first_step_child(folder: str, out: str, run_dir: str, t0: float) -> None:
    """Train to the first step on the corpus built into `out`; print seconds since `t0` (set by
    the parent just before starting this process)."""
    import lightning as L

    from f2llm.compose import compose_train
    from f2llm.train import train

    class FirstStep(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 0:
                print(json.dumps({"first_step_s": time.time() - t0,
                                  "peak_rss_mib": peak_rss_mib()}), flush=True)

    cfg = compose_train([
        "experiment=f2llm_v2_stage2", f"data.corpus.root={folder}", "model=tiny",
        "trainer=cpu", "trainer.max_steps=1", "data.batch_size=16", "data.num_workers=0",
        f"data.corpus.out_dir={out}", "trainer.enable_progress_bar=false",
        "callbacks.progress=null"], run_dir)
    train(cfg, callbacks=[FirstStep()])


def run_child(args: list[str], timeout: int = 7200, src: Path | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{args[:2]} failed:\n{done.stderr[-3000:]}")
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    return json.loads(lines[0])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--first-step":
        first_step_child(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500_000, 2_000_000])
    parser.add_argument("--datasets", type=int, default=50)
    parser.add_argument("--layouts", nargs="+", default=["raw", "tokenized"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_ingest"))
    parser.add_argument("--keep", action="store_true", help="keep the synthetic folders")
    parser.add_argument("--pool", type=int, default=20_000,
                        help="distinct texts per dataset (passages and negatives share them, as "
                             "the deduplicated documents of the tokenized layout)")
    parser.add_argument("--row-group-rows", type=int, default=None,
                        help="rows per parquet row group of the synthetic files (default: "
                             "pyarrow's, one row group per file here); Arrow's reader holds a "
                             "row group's dictionary pages, so peak RSS follows this size")
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds of plain read / build, alternating (the machine is shared)")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="another checkout's src folder: its build in every round (A/B); "
                             "it must export f2llm.data.build_f2llm_v2_corpus")
    args = parser.parse_args()
    from f2llm.data.sources.f2llm_v2 import write_synthetic

    names = names_for(args.datasets)
    results = []
    for layout in args.layouts:
        for size in args.sizes:
            folder = args.workdir / f"{layout}_{size}"
            out = args.workdir / f"built_{layout}_{size}"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            per = size // len(names)
            start = time.perf_counter()
            write_synthetic(folder, layout, names, per, num_negatives=24, seed=size,
                            pool_size=args.pool, row_group_size=args.row_group_rows)
            written = time.perf_counter() - start
            disk = sum(p.stat().st_size for p in folder.rglob("*.parquet"))
            row = {"layout": layout, "records": per * len(names), "datasets": len(names),
                   "row_group_rows": args.row_group_rows,
                   "parquet_mib": disk / 2**20, "write_synthetic_s": written}
            rounds: dict[str, list[dict]] = {"plain_read": [], "build": [], "baseline": []}
            for _ in range(args.repeats):
                rounds["plain_read"].append(run_child(["--child", "plain_read", str(folder),
                                                       str(out)]))
                if args.baseline_src is not None:
                    shutil.rmtree(out, ignore_errors=True)
                    rounds["baseline"].append(run_child(["--child", "build", str(folder),
                                                         str(out)], src=args.baseline_src))
                shutil.rmtree(out, ignore_errors=True)
                rounds["build"].append(run_child(["--child", "build", str(folder), str(out)]))
            row["rounds"] = rounds
            # The fastest round of each (the least disturbed by the neighbours).
            row.update({k: min(v, key=lambda m: m["seconds"]) for k, v in rounds.items() if v})
            row["reuse"] = run_child(["--child", "reuse", str(folder), str(out)])
            row["corpus_mib"] = sum(p.stat().st_size for p in out.rglob("*.arrow")) / 2**20
            t0 = time.time()
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
            done = subprocess.run([sys.executable, __file__, "--first-step", str(folder),
                                   str(out), str(out / "run"), str(t0)], capture_output=True,
                                  text=True, env=env, timeout=3600)
            lines = [x for x in done.stdout.splitlines() if x.startswith('{"first_step_s"')]
            if not lines:
                raise RuntimeError(f"first step failed:\n{done.stderr[-3000:]}")
            row["first_step"] = json.loads(lines[0])
            print(json.dumps(row), flush=True)
            results.append(row)
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
                shutil.rmtree(out, ignore_errors=True)
    print()
    print(f"{'layout':<10}{'records':>10}{'plain rows/s':>14}{'ingest rows/s':>15}{'ratio':>7}"
          f"{'cpu ratio':>10}{'baseline':>9}{'peak RSS MiB':>14}{'reuse s':>9}"
          f"{'first step s':>14}{'load':>6}")
    for r in results:
        plain, build = r["plain_read"], r["build"]
        ratio = build["rows_per_s"] / plain["rows_per_s"]
        base = (f"{r['baseline']['rows_per_s'] / plain['rows_per_s']:>9.2f}" if "baseline" in r
                else f"{'-':>9}")
        loads = [m["load"] for v in r["rounds"].values() for m in v]
        print(f"{r['layout']:<10}{r['records']:>10,}{plain['rows_per_s']:>14,.0f}"
              f"{build['rows_per_s']:>15,.0f}{ratio:>7.2f}{plain['cpu_s'] / build['cpu_s']:>10.2f}"
              f"{base}{max(m['peak_rss_mib'] for m in r['rounds']['build']):>14,.0f}"
              f"{r['reuse']['seconds']:>9.2f}{r['first_step']['first_step_s']:>14.1f}"
              f"{min(loads):>3.0f}-{max(loads):<2.0f}")


if __name__ == "__main__":
    main()
