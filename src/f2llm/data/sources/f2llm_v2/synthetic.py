"""Synthetic folders in the public F2LLM-v2 layouts, for tests and `scripts/bench_ingest.py`.

Real dataset names, made-up records: texts are drawn from a pool per dataset (vectorised with
numpy and Arrow, so millions of records take seconds), token ids come from a tokenizer when one
is given, else are random Qwen3 ids ending with EOS (what `tokenize_data_qwen.py` stores).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from f2llm.data.sources.f2llm_v2.recipes import FORMAT_OF_NAME

QWEN3_EOS_ID = 151643  # <|endoftext|>
# Real names from the three lists, one of each kind: plain, ISO 639-3 / 639-1 / English name,
# translation pair, code, a suffix that is no language (`_p2p`).
EXAMPLE_NAMES = ("amazon_polarity", "mela", "banking77", "arxiv_clustering_p2p", "msmarco",
                 "webfaq_deu", "miracl_ar", "mmarco_german", "unpc_ar2en", "paracrawl_en-sw",
                 "xcodeeval_nl2code_Rust", "mqa_fi")
_WORDS = tuple(" ".join((
    "data model file error open close read write value system user network server page table",
    "query answer question river city music light water house green blue small large quick",
    "slow north south market history science energy garden window")).split())


def _pool(rng: np.random.Generator, name: str, size: int, words: tuple[int, int]) -> list[str]:
    lengths = rng.integers(words[0], words[1] + 1, size)
    picks = rng.integers(0, len(_WORDS), int(lengths.sum()))
    out, at = [], 0
    for i, n in enumerate(lengths.tolist()):
        out.append(f"{name} {i} " + " ".join(_WORDS[j] for j in picks[at: at + n]))
        at += n
    return out


def _negatives(fmt: str, num_negatives: int) -> int:
    return 1 if fmt == "classification" else num_negatives


def _id_lists(rng: np.random.Generator, n: int, lengths: tuple[int, int]) -> pa.ListArray:
    sizes = rng.integers(lengths[0], lengths[1] + 1, n)
    values = rng.integers(0, QWEN3_EOS_ID, int(sizes.sum()), dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    values[offsets[1:] - 1] = QWEN3_EOS_ID
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def write_synthetic(
    root: str | Path,
    layout: str,
    names: Sequence[str],
    rows: int | Sequence[int],
    num_negatives: int = 24,
    seed: int = 0,
    tokenizer: Any = None,
    shared_corpus: bool = False,
    pool_size: int | None = None,
    words: tuple[int, int] = (4, 12),
    row_group_size: int | None = None,
) -> Path:
    """Write `names` (official names: their format decides the negatives) with `rows` records
    each into `root` in the `raw` or `tokenized` layout; `shared_corpus` writes one
    corpus.parquet instead of `<name>_corpus.parquet`. `row_group_size`: rows per parquet row
    group (None: pyarrow's default, one row group per file at these sizes). Returns `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    counts = [rows] * len(names) if isinstance(rows, int) else list(rows)
    shared = []
    for i, (name, n) in enumerate(zip(names, counts, strict=True)):
        rng = np.random.default_rng([seed, i])
        fmt = FORMAT_OF_NAME.get(name, "retrieval")
        k = _negatives(fmt, num_negatives)
        size = pool_size or max(2 * k + 2, min(n, 50_000))
        # Queries are their own pool; passages and negatives share one (as deduplicated docs).
        doc_texts = _pool(rng, name, size, words)
        query_texts = _pool(rng, f"{name} q", min(n, size), words)
        refs = {c: rng.integers(0, size, n) for c in ["passage", *(f"negative_{j}" for j in
                                                                  range(1, k + 1))]}
        # A record's negatives differ from its passage (shifted indices).
        for j in range(1, k + 1):
            refs[f"negative_{j}"] = (refs["passage"] + j) % size
        query_rows = rng.integers(0, len(query_texts), n)
        if layout == "raw":
            docs = pa.array(doc_texts, pa.string())
            queries = pa.array(query_texts, pa.string())
            table = {"query": queries.take(pa.array(query_rows))}
            table.update({c: docs.take(pa.array(r)) for c, r in refs.items()})
            pq.write_table(pa.table(table), root / f"{name}.parquet",
                           row_group_size=row_group_size)
            continue
        if tokenizer is not None:
            def ids(texts: list[str]) -> pa.ListArray:
                return pa.array(tokenizer(texts)["input_ids"], pa.list_(pa.int32()))
            doc_ids_lists, query_lists = ids(doc_texts), ids(query_texts)
        else:
            doc_ids_lists = _id_lists(rng, size, (8, 40))
            query_lists = _id_lists(rng, len(query_texts), (6, 24))
        doc_id = pc.binary_join_element_wise(
            pa.repeat(pa.scalar(f"{name}_"), size), pa.array(np.arange(size)).cast(pa.string()),
            "")
        table = {"query_input_ids": query_lists.take(pa.array(query_rows))}
        table.update({f"{c}_input_ids": doc_id.take(pa.array(r)) for c, r in refs.items()})
        pq.write_table(pa.table(table), root / f"{name}_query.parquet",
                       row_group_size=row_group_size)
        corpus = pa.table({"doc_id": doc_id, "input_ids": doc_ids_lists})
        if shared_corpus:
            shared.append(corpus)
        else:
            pq.write_table(corpus, root / f"{name}_corpus.parquet", row_group_size=row_group_size)
    if shared:
        with pq.ParquetWriter(root / "corpus.parquet", shared[0].schema) as writer:
            for table in shared:
                writer.write_table(table, row_group_size=row_group_size)
    return root
