"""GradCache equals the plain step in loss and gradients; the module trains with either path."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from f2llm.data.batch import TrainBatch
from f2llm.model import Encoder
from f2llm.module import F2LLMModule
from f2llm.objective import F2LLMObjective, gradcache_step
from f2llm.schedule import cosine_with_warmup
from tests.conftest import collated_batches, copy_encoder, grads, tiny_encoder


def plain_step(encoder: Encoder, objective: F2LLMObjective,
               batch: TrainBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    emb = encoder.forward_chunks(batch.chunks, batch.restore)
    loss, logs = objective.on_batch(emb, batch)
    loss.backward()
    return loss.detach(), logs


@pytest.mark.parametrize("fmt", ["retrieval", "classification"])
def test_gradcache_equals_plain_step(fmt: str) -> None:
    encoder = tiny_encoder()
    batch = collated_batches(encoder, fmt, count=1)[0]
    assert len(batch.chunks) >= 3  # several mini-batches, or the test proves nothing
    objective = F2LLMObjective()

    plain_loss, plain_logs = plain_step(encoder, objective, batch)
    plain_grads = grads(encoder)
    encoder.zero_grad(set_to_none=True)
    cached_loss, cached_logs = gradcache_step(encoder, objective, batch)

    assert not cached_loss.requires_grad
    torch.testing.assert_close(cached_loss, plain_loss, rtol=0, atol=1e-6)
    assert cached_logs.keys() == plain_logs.keys()
    for name, value in plain_grads.items():
        torch.testing.assert_close(encoder.get_parameter(name).grad, value, rtol=1e-5,
                                   atol=1e-5, msg=name)
    assert any(v.abs().max() > 1e-3 for v in plain_grads.values())


def _loader(batches: list[TrainBatch]) -> DataLoader:
    return DataLoader(batches, batch_size=None, collate_fn=lambda b: b)


def _trainer(**kwargs: Any) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, precision="32-true", logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def _module(encoder: Encoder, **kwargs: Any) -> F2LLMModule:
    return F2LLMModule(encoder, F2LLMObjective(), optimizer=partial(torch.optim.SGD, lr=0.5),
                       scheduler=partial(cosine_with_warmup, warmup_steps=1), **kwargs)


def test_gradcache_module_trains_like_the_plain_module() -> None:
    encoder = tiny_encoder()
    batches = collated_batches(encoder, "retrieval", count=2)
    clip = 1e-3
    probe = copy_encoder(encoder)
    plain_step(probe, F2LLMObjective(), batches[0])
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in probe.parameters()]))
    assert norm > 10 * clip  # clipping must change the update for the comparison to test it

    plain = _module(copy_encoder(encoder))
    plain_trainer = _trainer(max_steps=2, gradient_clip_val=clip)
    plain_trainer.fit(plain, train_dataloaders=_loader(batches))
    cached = _module(copy_encoder(encoder), gradcache=True, gradient_clip_val=clip)
    cached_trainer = _trainer(max_steps=2)
    cached_trainer.fit(cached, train_dataloaders=_loader(batches))

    assert not cached.automatic_optimization
    assert plain_trainer.global_step == cached_trainer.global_step == 2
    # The scheduler stepped after each optimizer step on both paths.
    assert cached_trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2
    torch.testing.assert_close(cached_trainer.optimizers[0].param_groups[0]["lr"],
                               plain_trainer.optimizers[0].param_groups[0]["lr"])
    for (name, p), q in zip(plain.named_parameters(), cached.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    moved = max((p - q).abs().max() for p, q in zip(encoder.parameters(), cached.parameters(),
                                                     strict=True))
    assert moved > 0
    metrics = cached_trainer.callback_metrics
    assert {"train/loss", "train/loss_inbatch", "train/loss_hard", "train/retrieval/loss"} <= set(
        metrics)


def test_gradient_clip_val_only_with_gradcache() -> None:
    with pytest.raises(ValueError, match="gradient_clip_val"):
        _module(tiny_encoder(), gradient_clip_val=1.0)


def test_plain_path_accumulates_gradients() -> None:
    encoder = tiny_encoder()
    module = _module(encoder)
    trainer = _trainer(max_steps=2, accumulate_grad_batches=2, gradient_clip_val=1.0)
    trainer.fit(module, train_dataloaders=_loader(collated_batches(encoder, "retrieval", 4)))
    assert trainer.global_step == 2
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 4
