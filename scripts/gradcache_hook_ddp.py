"""Why GradCache is a training step of its own and not a hook inside the loss.

    python scripts/gradcache_hook_ddp.py [--chunks 4]

sentence-transformers' `CachedMultipleNegativesRankingLoss` keeps GradCache inside the loss:
the loss embeds every chunk without a graph, and a hook on the returned loss re-encodes each
chunk and runs its backward when the trainer calls `loss.backward()`. This script runs that
design on two CPU processes under `DistributedDataParallel` (gloo), on a small MLP encoder and
an in-batch InfoNCE loss, and prints the largest |gradient difference| against the plain
DDP step on the same inputs (itself checked against the mean of the ranks' gradients), for:

- `hook, 1 chunk`: equal;
- `hook, N chunks`: not equal. DDP's reducer is armed once per forward and all-reduces during
  the first backward that reaches every parameter (the first chunk's); later chunks' gradients
  stay local to each rank;
- `hook, N chunks, p.grad seeded`: equal again, when chunks 1..N-1 go through
  `torch.autograd.grad` and are added to `p.grad` by hand, so the last chunk's backward makes
  the reducer all-reduce the sum. That relies on the reducer reading `p.grad` when a
  parameter's hook fires (an implementation detail of DDP), and it does not carry over to
  FSDP2, whose parameters are sharded DTensors the chunk's graph does not use directly.

Without DDP all three equal the plain step. So the module keeps GradCache as a manual step,
where `block_backward_sync` (no_sync) holds the all-reduce until the last chunk under every
strategy (`F2LLMModule._gradcache_training_step`). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

WORLD = 2


def encoder() -> nn.Module:
    torch.manual_seed(0)  # the same weights on every rank and in every arm
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8))


def infonce(emb: Tensor) -> Tensor:
    """In-batch InfoNCE: the first half of `emb` are queries, the second their positives."""
    q, p = F.normalize(emb, dim=-1).chunk(2)
    return F.cross_entropy(q @ p.T / 0.05, torch.arange(len(q)))


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = encoder()

    def forward(self, x: Tensor) -> Tensor:
        return infonce(self.enc(x))


class LossHook(nn.Module):
    """GradCache inside the loss, as sentence-transformers' cached losses do it."""

    def __init__(self, chunks: int, seed_grads: bool = False) -> None:
        super().__init__()
        self.enc, self.chunks, self.seed_grads = encoder(), chunks, seed_grads

    def forward(self, x: Tensor) -> Tensor:
        parts = x.chunk(self.chunks)
        with torch.no_grad():
            emb = torch.cat([self.enc(c) for c in parts])
        emb.requires_grad_()
        loss = infonce(emb)
        (grad,) = torch.autograd.grad(loss, emb)
        params = list(self.enc.parameters())

        def backward_chunks(scale: Tensor) -> None:
            with torch.enable_grad():  # a hook runs under the backward's no-grad mode
                pieces = grad.split([len(c) for c in parts])
                for i, (chunk, g) in enumerate(zip(parts, pieces, strict=True)):
                    out = self.enc(chunk)
                    if self.seed_grads and i < len(parts) - 1:
                        chunk_grads = torch.autograd.grad(out, params, g * scale)
                        for p, gp in zip(params, chunk_grads, strict=True):
                            p.grad = gp if p.grad is None else p.grad + gp
                    else:
                        torch.autograd.backward(out, g * scale)

        out = loss.detach().requires_grad_()
        out.register_hook(backward_chunks)
        return out


def arms(chunks: int) -> dict[str, nn.Module]:
    return {"plain": Plain(), "hook, 1 chunk": LossHook(1),
            f"hook, {chunks} chunks": LossHook(chunks),
            f"hook, {chunks} chunks, p.grad seeded": LossHook(chunks, seed_grads=True)}


def grads(model: nn.Module, x: Tensor, ddp: bool) -> list[Tensor]:
    # The wrapper must outlive the backward: a collected DDP object takes its reducer's hooks
    # with it, and the backward then all-reduces nothing.
    wrapped = DistributedDataParallel(model) if ddp else model
    wrapped(x).backward()
    return [p.grad.clone() for p in model.parameters()]


def max_diff(a: list[Tensor], b: list[Tensor]) -> float:
    return max(float((u - v).abs().max()) for u, v in zip(a, b, strict=True))


def worker(rank: int, port: int, chunks: int, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.manual_seed(100 + rank)
    x = torch.randn(16, 16)  # each rank its own batch
    ddp = {name: grads(m, x, ddp=True) for name, m in arms(chunks).items()}
    alone = {name: grads(m, x, ddp=False) for name, m in arms(chunks).items()}
    mean = [g.clone() for g in alone["plain"]]
    for g in mean:  # what DDP must give: the mean of the ranks' local gradients
        dist.all_reduce(g)
        g /= WORLD
    if rank == 0:
        queue.put({"chunks": chunks,
                   "plain DDP step vs the mean of the ranks' gradients": max_diff(ddp["plain"],
                                                                                 mean),
                   "ddp": {k: max_diff(v, ddp["plain"]) for k, v in ddp.items() if k != "plain"},
                   "one process": {k: max_diff(v, alone["plain"]) for k, v in alone.items()
                                   if k != "plain"}})
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=4)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the ranks start with torch imported (CPU only, nothing run before the fork).
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, port, args.chunks, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    result = queue.get(timeout=300)
    for p in procs:
        p.join(timeout=60)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
