"""Retrieval: an English message retrieves its translations, pooled over all languages (every
translation is relevant): nDCG@10, MRR@10, Recall@1/5/10. Shares bitext's embedded sets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from f2llm.evaluation.retrieval import retrieval_scores
from f2llm.evaluation.tasks.base import Table, register
from f2llm.evaluation.tasks.bitext import BitextMining


def translation_qrels(sources: Sequence[str], max_queries: int | None = 1000, seed: int = 0
                      ) -> tuple[list[int], dict[int, set[int]]]:
    """Queries (row of the first occurrence of each English source) and, for query i, the rows
    of every translation of the same source."""
    rows: dict[str, list[int]] = {}
    for i, text in enumerate(sources):
        rows.setdefault(text, []).append(i)
    keys = sorted(rows)
    if max_queries is not None and len(keys) > max_queries:
        chosen = np.random.default_rng(seed).permutation(len(keys))[:max_queries]
        keys = [keys[i] for i in sorted(chosen)]
    queries = [rows[k][0] for k in keys]
    return queries, {q: set(rows[k]) for q, k in enumerate(keys)}


@register
class TranslationRetrieval(BitextMining):
    """Bitext's held-out set and embeddings, scored as retrieval."""

    name = "retrieval"
    main_metric = "ndcg_at_10"

    def score(self, embeddings: Mapping[str, Tensor], table: Table, dims: Sequence[int]
              ) -> tuple[dict[str, float], Any]:
        queries, relevant = translation_qrels(table["source"])
        return retrieval_scores(embeddings["bitext/source"][queries],
                                embeddings["bitext/target"], relevant, dims), None
