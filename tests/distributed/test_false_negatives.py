"""The false-negative rules under torch.distributed (2 gloo processes): the positives' keys and
the guide's scores are gathered like the positives, so each rule drops over both ranks what it
drops in one process on the concatenated batch (the rules in one process:
tests/unit/test_false_negatives.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.distributed.ranks import start_ranks

WORLD = 2
B, K, D = 6, 2, 32  # B queries over the two ranks: 3 each
TAU = 0.05
# Rank 0's row 0 and rank 1's rows 0 and 2 share one positive text: only the gathered keys see
# that the other rank's positives are duplicates. Row 2's first negative is its own positive's
# text.
RANK_POSITIVE_KEYS = torch.tensor([7, 1, 2, 7, 4, 7])
NEGATIVE_KEYS = torch.tensor([[10, 11], [12, 13], [2, 14], [15, 16], [17, 18], [19, 20]])


def _embeddings(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(B, D, generator=g, dtype=torch.float64)
    # Positives near their queries, negatives near them too: the margin rule has work to do.
    positive = query + 0.8 * torch.randn(B, D, generator=g, dtype=torch.float64)
    negatives = query[:, None] + 0.7 * torch.randn(B, K, D, generator=g, dtype=torch.float64)
    return query, positive, negatives


def _guide(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A guide model's embeddings of the same texts, of another width (12): a fixed random
    projection of the model's plus noise, so guide and model agree only roughly."""
    g = torch.Generator().manual_seed(3)
    project = torch.randn(D, 12, generator=g, dtype=torch.float64)
    return tuple((x.detach() @ project) + 0.5 * torch.randn(*x.shape[:-1], 12, generator=g,
                                                            dtype=torch.float64)
                 for x in (query, positive, negatives))


def _rank_loss(rank: int | None, gather: bool) -> tuple[torch.Tensor, dict, torch.Tensor]:
    from f2llm.objective import F2LLMObjective

    query, positive, negatives = (x.clone().requires_grad_() for x in _embeddings(1))
    guide = _guide(query, positive, negatives)
    rows = slice(None) if rank is None else slice(3 * rank, 3 * rank + 3)
    objective = F2LLMObjective(tau=TAU, mrl_dims=[32, 8], mrl_weights=[1.0, 0.5],
                               mask_same_text=True, false_negative_margin=0.0,
                               guide_margin=0.05, gather_inbatch=gather)
    loss, logs = objective(query[rows], positive[rows], negatives[rows], use_inbatch=True,
                           keys=(RANK_POSITIVE_KEYS[rows], NEGATIVE_KEYS[rows]),
                           guide=tuple(g[rows] for g in guide))
    loss.backward()
    return loss.detach(), logs, query.grad


def _worker(rank: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank,
                            world_size=WORLD)
    loss, logs, query_grad = _rank_loss(rank, gather=True)
    local, local_logs, _ = _rank_loss(rank, gather=False)
    torch.save({"loss": loss, "logs": logs, "query_grad": query_grad, "local": local,
                "local_logs": local_logs}, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_gathered_rules_equal_one_process(tmp_path: Path) -> None:
    start_ranks(_worker, (str(tmp_path),), WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    loss, logs, query_grad = _rank_loss(None, gather=False)
    # Each rank's loss is the mean over its own queries against every rank's positives.
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), loss)
    for rule in ("same_text", "margin", "guide"):
        assert sum(r["logs"][f"dropped/{rule}"] for r in ranks) == logs[f"dropped/{rule}"]
    # Duplicates across ranks: with the keys gathered, more is dropped than rank by rank.
    assert sum(r["logs"]["dropped/same_text"] for r in ranks) > sum(
        r["local_logs"]["dropped/same_text"] for r in ranks)
    for rank, r in enumerate(ranks):
        rows = slice(3 * rank, 3 * rank + 3)
        # The query gradient is the rank's own (mean over its B / W queries: W times).
        torch.testing.assert_close(r["query_grad"][rows], WORLD * query_grad[rows])
