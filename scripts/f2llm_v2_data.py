"""The public F2LLM-v2 data: download it, or print its resolved table without training.

    python scripts/f2llm_v2_data.py download --root <folder> [--datasets msmarco webfaq_deu ...]
    python scripts/f2llm_v2_data.py table data.corpus.root=<folder> [experiment=...] [data.alpha=.3]
    python scripts/f2llm_v2_data.py synthetic --root <folder> [--layout tokenized] [--rows 64]

`table` composes the training config (default `experiment=f2llm_v2_stage2`; any Hydra override
works) and prints every dataset's format, language, direction and rows (from parquet footers:
nothing is built), then each stage's groups with their sampling probability under `data.alpha`.
`synthetic` writes a small made-up folder in either layout with real dataset names (offline
tries of the commands; the tokenized one with the bundled Qwen3 tokenizer).
"""

from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf

from f2llm.compose import compose_train
from f2llm.data.datamodule import select_datasets
from f2llm.data.sampler import temperature_probs
from f2llm.data.sources.f2llm_v2 import (
    EXAMPLE_NAMES,
    REPO_ID,
    dataset_rows,
    download_f2llm_v2,
    find_layout,
    recipes_for,
)


def table(overrides: list[str]) -> str:
    if not any(o.startswith("experiment=") for o in overrides):
        overrides = ["experiment=f2llm_v2_stage2", *overrides]
    cfg = compose_train(overrides)
    corpus = cfg.data.corpus
    if corpus.get("source") != "f2llm_v2":
        raise SystemExit("the composed data config is not data=f2llm_v2")
    layout = find_layout(corpus.root, corpus.layout)
    datasets = (OmegaConf.to_container(corpus.datasets, resolve=True)
                if corpus.datasets is not None else {})
    include = list(corpus.include) if corpus.include else None
    recipes = recipes_for(layout, datasets, include)
    rows = {r.name: dataset_rows(layout, r) for r in recipes}
    lines = [f"{layout.kind} layout, {len(recipes)} datasets, "
             f"{sum(sum(g.values()) for g in rows.values()):,} records under {corpus.root}", ""]
    width = max(len(r.name) for r in recipes)
    lines.append(f"{'dataset':<{width}}  {'format':<14} {'language':<16} {'direction':<10} "
                 f"{'rows':>10}  from")
    for r in recipes:
        language = r.language or f"column {r.language_column}"
        lines.append(f"{r.name:<{width}}  {r.format:<14} {language:<16} "
                     f"{r.direction or '-':<10} {sum(rows[r.name].values()):>10,}  {r.source}")
    alpha = float(cfg.data.alpha)
    stages = OmegaConf.to_container(cfg.data.stages, resolve=True) or [
        {"name": "train", "datasets": ["*"], "instructions": False}]
    formats = {r.name: r.format for r in recipes}
    for stage in stages:
        names = select_datasets(stage["datasets"], formats)
        groups = [(n, lang, d, c) for n in names for (lang, d), c in rows[n].items()]
        probs = temperature_probs([c for *_, c in groups], alpha)
        lines += ["", f"stage {stage['name']}: {len(groups)} groups (dataset, language, "
                      f"direction), p ~ n^{alpha}, instructions "
                      f"{'on' if stage.get('instructions') else 'off'}"]
        lines.append(f"{'dataset':<{width}}  {'language':<16} {'direction':<10} {'rows':>10} "
                     f"{'p':>9}")
        order = sorted(range(len(groups)), key=lambda i: -probs[i])
        for i in order:
            n, lang, d, c = groups[i]
            lines.append(f"{n:<{width}}  {lang:<16} {d or '-':<10} {c:>10,} {probs[i]:>9.5f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "table":
        print(table(argv[1:]))
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="snapshot_download the public data (or some datasets)")
    d.add_argument("--root", required=True, help="folder to download into")
    d.add_argument("--datasets", nargs="*", help="dataset names (default: everything)")
    d.add_argument("--layout", choices=["raw", "tokenized"], default="raw",
                   help="which files of each dataset to fetch")
    d.add_argument("--repo-id", default=REPO_ID)
    d.add_argument("--revision", default=None)
    sub.add_parser("table", help="print the resolved table: table <hydra overrides>")
    syn = sub.add_parser("synthetic", help="write a small synthetic folder (real names)")
    syn.add_argument("--root", required=True)
    syn.add_argument("--layout", choices=["raw", "tokenized"], default="raw")
    syn.add_argument("--rows", type=int, default=64, help="records per dataset")
    syn.add_argument("--datasets", nargs="*", default=list(EXAMPLE_NAMES))
    args = parser.parse_args(argv)
    if args.command == "synthetic":
        from f2llm.data.sources.f2llm_v2 import write_synthetic
        from f2llm.model.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(None) if args.layout == "tokenized" else None
        write_synthetic(args.root, args.layout, args.datasets, args.rows, tokenizer=tokenizer)
        print(f"wrote {len(args.datasets)} synthetic datasets ({args.layout}) into {args.root}")
        return
    try:
        path = download_f2llm_v2(args.root, args.datasets, args.repo_id, args.layout, args.revision)
    except ConnectionError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"downloaded into {path}")


if __name__ == "__main__":
    main()
