"""GradCache: the full-batch contrastive loss with the activation memory of one chunk.

The loss couples every text of the batch (in-batch negatives), so a plain step keeps the
activations of all of them until the backward. GradCache (Gao et al., 2021) splits the step:
embed every chunk without a graph, take the loss and its gradient with respect to the detached
embeddings, then re-encode one chunk at a time with a graph and push the cached gradient
through it. Loss and parameter gradients equal the plain step's; each text is encoded twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from f2llm.objective.objective import F2LLMObjective

if TYPE_CHECKING:
    from f2llm.data.batch import TrainBatch


class ChunkEncoder(Protocol):
    """What GradCache needs of the encoder (`f2llm.model.Encoder` has both)."""

    def __call__(self, input_ids: Tensor, attention_mask: Tensor,
                 layers: Sequence[int] | None = None) -> Tensor: ...

    def matched_chunks(self, chunks: Sequence[dict[str, Tensor]]) -> list[dict[str, Tensor]]: ...

    def forward_chunks(self, chunks: Sequence[dict[str, Tensor]], restore: Tensor,
                       layers: Sequence[int] | None = None, match: bool = True) -> Tensor: ...


# (embeddings of one chunk, d loss / d those embeddings, whether it is the step's last chunk)
ChunkBackward = Callable[[Tensor, Tensor, bool], None]


def _autograd_backward(emb: Tensor, grad: Tensor, last: bool) -> None:
    torch.autograd.backward(emb, grad)


def gradcache_step(
    encoder: ChunkEncoder,
    objective: F2LLMObjective,
    batch: TrainBatch,
    backward: ChunkBackward = _autograd_backward,
    teacher: Tensor | None = None,
    proceed: Callable[[Tensor], bool] | None = None,
    guide: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Accumulate the batch loss's parameter gradients chunk by chunk; return (loss, logs).

    The batch's token-bounded chunks (`data.max_tokens_per_chunk`) are the GradCache mini-batches.
    `teacher` holds the teacher's embeddings of the batch's texts (same order) for KD, `guide`
    a guide model's, for GISTEmbed's false-negative rule.
    `proceed(loss)` may veto the backward passes (e.g. a non-finite loss). The loss comes back
    detached. `backward` runs each chunk's backward; a trainer passes one
    that goes through its precision plugin and skips the gradient all-reduce until the last
    chunk. The two encodings of a chunk must agree, so the encoder must be deterministic:
    Qwen3 has no dropout (attention_dropout is 0), otherwise each chunk's RNG state would have
    to be saved in the first pass and restored for the second.
    """
    # Both passes run the same chunks: on a sharded encoder, as many on every rank.
    chunks, restore = encoder.matched_chunks(batch.chunks), batch.restore
    with torch.no_grad():
        emb = encoder.forward_chunks(chunks, restore, layers=objective.layers, match=False)
    emb = emb.detach().requires_grad_()
    loss, logs = objective.on_batch(emb, batch, teacher, guide)
    if proceed is not None and not proceed(loss):
        return loss.detach(), logs
    # Under torch.distributed the in-batch term's all_gather sends the other ranks' share of
    # the positives' gradient back here in this call.
    (grad,) = torch.autograd.grad(loss, emb)

    # forward_chunks returns cat(chunk outputs)[restore]; put the gradient in chunk order
    # (rows past the batch's, from matching, get zero).
    total = sum(chunk["input_ids"].shape[0] for chunk in chunks)
    chunk_grad = grad.new_zeros(total, *grad.shape[1:])
    chunk_grad[restore] = grad
    offset = 0
    for i, chunk in enumerate(chunks):
        # Each chunk looks its tokens up itself, so each backward builds a dense
        # vocabulary-sized gradient for the embedding table (forward_chunks shares one lookup).
        # One shared lookup with a final backward would break DDP: the synced backward (the
        # last) must reach every parameter.
        rows = chunk["input_ids"].shape[0]
        chunk_emb = encoder(input_ids=chunk["input_ids"], attention_mask=chunk["attention_mask"],
                            layers=objective.layers)
        backward(chunk_emb, chunk_grad[offset : offset + rows], i == len(chunks) - 1)
        offset += rows
    return loss.detach(), logs
