"""Two CPU processes (gloo) reproduce one process on the concatenated batch.

Convention, as under DDP: each rank's loss is the mean over its own B queries (scored against
the positives of all ranks), and DDP averages parameter gradients over the W ranks. The
one-process loss over the W * B queries is then the mean of the rank losses, and the rank-mean
of the parameter gradients equals the one-process gradient. The gradient a rank gets for its
own embeddings is W times the one-process gradient for those rows: the autograd all_gather
sums every rank's gradient for a positive back to its owner, and the 1 / W comes from DDP's
average.

One spawn runs every scenario (spawning costs more than the scenarios) and saves what each
rank saw; the tests compare it with the same computations in this process.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from torch.utils.data import DataLoader

from f2llm.data.batch import TrainBatch
from f2llm.model import Encoder
from f2llm.model.packing import pack_by_length
from f2llm.module import F2LLMModule
from f2llm.objective import F2LLMObjective, gradcache_step
from f2llm.schedule import cosine_with_warmup
from tests.conftest import tiny_encoder
from tests.distributed.tiny import fresh_encoder

WORLD = 2
B, K, D_IN, D = 4, 3, 16, 32  # per-rank queries, hard negatives, linear input and output width
VOCAB = 512  # token ids drawn below this; the tiny model keeps the real vocabulary size
STEPS = 2
CLIP = 1e-3


# ---- inputs, identical in every process (fixed seeds) ----------------------------------------


def objective_inputs() -> tuple[nn.Linear, Tensor]:
    """A linear layer and the inputs whose outputs are the embeddings: rows are queries,
    positives, then negatives [W * B, K] in query-major order."""
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(D_IN, D).double()
    with torch.no_grad():
        linear.weight.copy_(torch.randn(D, D_IN, generator=generator, dtype=torch.float64))
        linear.bias.copy_(torch.randn(D, generator=generator, dtype=torch.float64))
    x = torch.randn(WORLD * B * (2 + K), D_IN, generator=generator, dtype=torch.float64)
    return linear, x


def rank_rows(rank: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Row indices of the queries, positives and negatives [b, K] of `rank` (None: all)."""
    n = WORLD * B
    q = torch.arange(n) if rank is None else torch.arange(rank * B, (rank + 1) * B)
    return q, n + q, 2 * n + (q[:, None] * K + torch.arange(K))


def objective_loss(linear: nn.Linear, x: Tensor, rank: int | None, use_negatives: bool,
                   gather: bool) -> Tensor:
    q, p, n = rank_rows(rank)
    emb = linear(x)
    negatives = emb[n] if use_negatives else None
    objective = F2LLMObjective(gather_inbatch=gather)
    return objective(emb[q], emb[p], negatives, use_inbatch=True)[0]


def records(step: int) -> list[list[list[int]]]:
    """W * B records of [query, positive, negative_1..K] token ids for step `step`."""
    generator = torch.Generator().manual_seed(100 + step)
    out = []
    for _ in range(WORLD * B):
        lengths = torch.randint(2, 14, (2 + K,), generator=generator).tolist()
        out.append([torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in lengths])
    return out


def collate(recs: list[list[list[int]]], step: int = 0) -> TrainBatch:
    """The datamodule's batch layout: queries, positives, then negatives column by column."""
    texts = [r[0] for r in recs] + [r[1] for r in recs]
    texts += [r[2 + j] for j in range(K) for r in recs]
    chunks, restore, padding = pack_by_length(texts, pad_id=0, max_tokens=40)
    return TrainBatch(chunks, restore, batch_size=len(recs), num_negatives=K, use_inbatch=True,
                      format="retrieval", dataset="toy", language="xx", group="toy/xx",
                      indices=np.arange(len(recs)), stage="train", epoch=0, position=step,
                      num_tokens=sum(map(len, texts)), num_padding=padding)


def batch(step: int, rank: int | None) -> TrainBatch:
    recs = records(step)
    return collate(recs if rank is None else recs[rank * B : (rank + 1) * B], step)


def module(encoder: Encoder, gradcache: bool) -> F2LLMModule:
    return F2LLMModule(encoder, F2LLMObjective(), optimizer=partial(torch.optim.SGD, lr=0.5),
                       scheduler=partial(cosine_with_warmup, warmup_steps=1),
                       gradcache=gradcache, gradient_clip_val=CLIP if gradcache else None)


def fit(model: F2LLMModule, rank: int | None, strategy: Any = "auto",
        devices: int = 1) -> F2LLMModule:
    loader = DataLoader([batch(s, rank) for s in range(STEPS)], batch_size=None,
                        collate_fn=lambda b: b)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy,
                        precision="32-true", max_steps=STEPS, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False,
                        gradient_clip_val=None if model.gradcache else CLIP)
    trainer.fit(model, train_dataloaders=loader)
    return model


def params(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---- the two ranks -----------------------------------------------------------------------------


def _worker(rank: int, out: str) -> None:
    torch.set_num_threads(1)  # two processes share the machine's cores
    # With these set, Lightning launches no processes; it finds the group initialised and keeps
    # it (the file rendezvous needs no free port).
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="0", WORLD_SIZE=str(WORLD),
                      NODE_RANK="0", LOCAL_RANK=str(rank), RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank,
                            world_size=WORLD)
    result: dict[str, Any] = {}

    for use_negatives in (False, True):
        linear, x = objective_inputs()
        x.requires_grad_()
        loss = objective_loss(linear, x, rank, use_negatives, gather=True)
        loss.backward()
        result[f"objective/{use_negatives}"] = {
            "loss": loss.detach(), "x_grad": x.grad, "weight_grad": linear.weight.grad,
            "bias_grad": linear.bias.grad,
            "local_loss": objective_loss(linear, x, rank, use_negatives, gather=False).detach(),
        }

    encoder = fresh_encoder()
    loss, _ = gradcache_step(encoder, F2LLMObjective(), batch(0, rank))
    grads = {}
    for name, p in encoder.named_parameters():
        dist.all_reduce(p.grad)  # what DDP does, as a sum; divided by W in the test
        grads[name] = p.grad
    result["gradcache"] = {"loss": loss, "grads": grads}

    strategy = DDPStrategy(process_group_backend="gloo")
    result["ddp/plain"] = params(fit(module(fresh_encoder(), False), rank, strategy, WORLD))
    strategy = DDPStrategy(process_group_backend="gloo")
    result["ddp/gradcache"] = params(fit(module(fresh_encoder(), True), rank, strategy, WORLD))

    torch.save(result, Path(out) / f"rank{rank}.pt")
    # Both ranks past their last collective before either tears gloo down (a
    # rank leaving early once aborted its peer: 'terminate called without an
    # active exception').
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(str(out),), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# ---- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("use_negatives", [False, True], ids=["inbatch", "inbatch+hard"])
def test_gathered_objective_equals_one_process(ranks: list[dict[str, Any]],
                                               use_negatives: bool) -> None:
    linear, x = objective_inputs()
    x.requires_grad_()
    loss = objective_loss(linear, x, None, use_negatives, gather=False)
    loss.backward()
    got = [r[f"objective/{use_negatives}"] for r in ranks]

    torch.testing.assert_close(torch.stack([g["loss"] for g in got]).mean(), loss.detach())
    # The gather changed the loss: each rank scored against the other rank's positives too.
    assert all((g["loss"] - g["local_loss"]).abs() > 1e-3 for g in got)
    for name, reference in (("weight_grad", linear.weight.grad), ("bias_grad", linear.bias.grad)):
        torch.testing.assert_close(torch.stack([g[name] for g in got]).mean(0), reference)
    for rank, g in enumerate(got):
        rows = torch.cat([r.flatten() for r in rank_rows(rank)])
        torch.testing.assert_close(g["x_grad"][rows], WORLD * x.grad[rows])
        others = torch.ones(len(x), dtype=torch.bool)
        others[rows] = False
        assert (g["x_grad"][others] == 0).all()  # a rank's graph holds only its own inputs


def test_gradcache_across_ranks_equals_one_plain_step(ranks: list[dict[str, Any]]) -> None:
    encoder = fresh_encoder()
    full = batch(0, None)
    emb = encoder.forward_chunks(full.chunks, full.restore)
    loss = F2LLMObjective().on_batch(emb, full)[0]
    loss.backward()

    torch.testing.assert_close(torch.stack([r["gradcache"]["loss"] for r in ranks]).mean(),
                               loss.detach(), rtol=0, atol=1e-6)
    for name, p in encoder.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r["gradcache"]["grads"][name] / WORLD, p.grad,
                                       rtol=1e-5, atol=1e-5, msg=name)


def test_ddp_training_equals_one_process(ranks: list[dict[str, Any]]) -> None:
    reference = params(fit(module(fresh_encoder(), False), None))
    start = params(module(fresh_encoder(), False))
    for mode in ("ddp/plain", "ddp/gradcache"):
        # DDP keeps the replicas equal, and equal to one process on the whole batch.
        for r in ranks:
            for name, value in reference.items():
                torch.testing.assert_close(r[mode][name], value, rtol=1e-5, atol=1e-6,
                                           msg=f"{mode} {name}")
    assert max((reference[n] - start[n]).abs().max() for n in start) > 0


def test_rank_inputs_are_reproducible() -> None:
    # The ranks rebuild the inputs and the model from seeds; they must come out the same.
    a, b = tiny_encoder(), tiny_encoder()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert records(0) == records(0)
