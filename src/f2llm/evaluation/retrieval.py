"""Retrieval metrics (nDCG@10, MRR@10, Recall@k) at every Matryoshka dim."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics import Metric
from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall


def _metrics(k: int, recall_at: Sequence[int]) -> dict[str, Metric]:
    return {
        f"ndcg_at_{k}": RetrievalNormalizedDCG(top_k=k),
        f"mrr_at_{k}": RetrievalMRR(top_k=k),
        **{f"recall_at_{r}": RetrievalRecall(top_k=r) for r in recall_at},
    }


def retrieval_scores(
    queries: Tensor,
    corpus: Tensor,
    relevant: Mapping[int, Collection[int]],
    dims: Sequence[int],
    k: int = 10,
    recall_at: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """nDCG@k, MRR@k and Recall@r per dim, keyed `<metric>@<dim>` (e.g. `ndcg_at_10@64`).

    `queries` and `corpus` are raw full-width embeddings; `relevant` maps a query's row to the
    rows of its relevant corpus entries (binary relevance). Queries without a relevant entry are
    left out, as in BEIR/MTEB. Cosine similarity; each dim truncates, then normalises.
    """
    qids = [q for q in sorted(relevant) if relevant[q]]
    if not qids:
        raise ValueError("no query has a relevant corpus entry")
    rel = [torch.as_tensor(sorted(relevant[q]), dtype=torch.long) for q in qids]
    top = min(max([k, *recall_at]), len(corpus))
    picked = queries[qids]
    out: dict[str, float] = {}
    for dim in dims:
        q = F.normalize(picked[:, :dim].float(), dim=-1)
        c = F.normalize(corpus[:, :dim].float(), dim=-1)
        preds, target, indexes = [], [], []
        for start in range(0, len(q), chunk_size):
            sims = q[start : start + chunk_size] @ c.T
            top_idx = sims.topk(top, dim=1).indices
            for row in range(len(sims)):
                i = start + row
                # Relevant entries ranked below the top are scored too: nDCG's ideal ordering
                # and Recall's denominator count every relevant entry, retrieved or not.
                cand = torch.unique(torch.cat([top_idx[row], rel[i]]))
                preds.append(sims[row, cand])
                target.append(torch.isin(cand, rel[i]))
                indexes.append(torch.full((len(cand),), i, dtype=torch.long))
        p, t, idx = torch.cat(preds), torch.cat(target), torch.cat(indexes)
        for name, metric in _metrics(k, recall_at).items():
            out[f"{name}@{dim}"] = float(metric(p, t, indexes=idx))
    return out
