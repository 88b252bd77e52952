"""Mine hard negatives for your own (query, passage) pairs with a trained model.

    python src/f2llm/mine.py model_path=<export> input=my_pairs.parquet language=en \
        out=mined.parquet num_negatives=7 [range_min=.. range_max=.. relative_margin=..]

Writes our parquet layout, `query`, `passage`, `negative_1..k`, `language`, ready for a
manifest entry `{path: mined.parquet, format: retrieval, language_column: language}`.
The input is read and checked as a retrieval dataset (parquet, JSONL or a datasets folder;
`positive` is accepted for `passage`). Negatives come from sentence-transformers'
`mine_hard_negatives` with its options (rank range, margins, max/min score, top or random
sampling, exact search or faiss when installed), mined within each language: the candidates of
a query are the passages of its language plus the optional `corpus`. A query left with fewer
than `num_negatives` candidates is dropped (counted in the log and in
`<out>.json`, next to the parquet).
"""

from __future__ import annotations

from f2llm.bootstrap import (  # first: sys.path and the project root
    CONFIG_DIR,
    exit_without_final_collection,
)

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

# pyarrow and the readers (which import the model code) are imported by the functions that use
# them: `--help`, `--cfg job` and a mistake Hydra finds in the command line are answered without
# them.


log = logging.getLogger("f2llm.mine")
# `mine_hard_negatives` keyword arguments taken as they are from the config.
MINING_OPTIONS = ("range_min", "range_max", "max_score", "min_score", "absolute_margin",
                  "relative_margin", "sampling_strategy", "query_prompt_name", "batch_size",
                  "use_faiss")


def load_model(model_path: str | Path) -> SentenceTransformer:
    """A sentence-transformers model from an export, a run folder (its export/) or the
    all-MiniLM-L6-v2 baseline; a hub name only with a network."""
    from sentence_transformers import SentenceTransformer

    from f2llm.eval import MINILM, minilm_folder

    path = Path(model_path)
    if str(model_path) == MINILM and not path.exists():
        path = minilm_folder()
    if path.is_dir() and not (path / "modules.json").exists() and (path / "export").is_dir():
        path = path / "export"
    if path.is_dir() and (path / "modules.json").exists():
        return SentenceTransformer(str(path))
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(f"model_path={model_path}: no modules.json there (an export or "
                                "run folder), and HF_HUB_OFFLINE=1 rules out a hub name")
    return SentenceTransformer(str(model_path))


def read_corpus_texts(path: str | Path) -> list[str]:
    """Extra candidates: a parquet or JSONL file with a `passage` or `text` column, or a
    .txt file with one text per line."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.suffix == ".txt":
        return [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".parquet":
        table = pq.read_table(path)
    elif path.suffix in (".jsonl", ".ndjson"):
        import pyarrow.json as pj

        table = pj.read_json(path)
    else:
        raise ValueError(f"corpus={path}: expected .parquet, .jsonl or .txt")
    column = next((c for c in ("passage", "text") if c in table.column_names), None)
    if column is None:
        raise ValueError(f"corpus={path}: needs a `passage` or `text` column, has "
                         f"{table.column_names}")
    return [t for t in table.column(column).to_pylist() if t and t.strip()]


def mine(cfg: DictConfig) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    from f2llm.data.readers import DatasetSpec, read_dataset

    if (cfg.language is None) == (cfg.language_column is None):
        raise ValueError("give the input's language (language=en) or the column holding one per "
                         "record (language_column=lang)")
    k = int(cfg.num_negatives)
    if not 1 <= k <= 24:
        raise ValueError(f"num_negatives={k}: our layout stores 1 to 24 negatives")
    pairs = read_dataset(DatasetSpec(path=cfg.input, format="retrieval", language=cfg.language,
                                     language_column=cfg.language_column), num_negatives=0)
    extra = read_corpus_texts(cfg.corpus) if cfg.corpus else []
    model = load_model(cfg.model_path)
    options = {name: cfg[name] for name in MINING_OPTIONS}
    negatives = [f"negative_{j}" for j in range(1, k + 1)]
    columns: dict[str, list[str]] = {c: [] for c in ["query", "passage", *negatives, "language"]}
    dropped: dict[str, int] = {}
    languages = pairs.column("language").to_pylist()
    for language in sorted(set(languages)):
        rows = [i for i, lang in enumerate(languages) if lang == language]
        group = pairs.take(rows)
        passages = group.column("passage").to_pylist()
        mined = mine_hard_negatives(
            Dataset.from_dict({"query": group.column("query").to_pylist(),
                               "passage": passages}),
            model, anchor_column_name="query", positive_column_name="passage",
            corpus=list(dict.fromkeys(passages + extra)), num_negatives=k,
            output_format="n-tuple", verbose=False, **options)
        for name in columns:
            columns[name] += ([language] * len(mined) if name == "language" else mined[name])
        dropped[language] = len(rows) - len(mined)
        log.info("%s: %d of %d queries got %d negatives", language, len(mined), len(rows), k)
    if not columns["query"]:
        raise ValueError(f"no query got {k} negatives: lower num_negatives, or widen range_max "
                         "and the margins")
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({c: pa.array(v, pa.string()) for c, v in columns.items()}), out)
    record = {"model_path": str(cfg.model_path), "input": str(cfg.input), "out": str(out),
              "num_negatives": k, "rows": len(columns["query"]), "dropped_by_language": dropped,
              "options": options}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %d rows with %d negatives to %s", len(columns["query"]), k, out)
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="mine")
def main(cfg: DictConfig) -> None:
    mine(cfg)


if __name__ == "__main__":
    exit_without_final_collection()
    main()
