"""The bitsandbytes 8-bit optimizer configs compose and train a small module on the CPU."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.optim import Optimizer

from f2llm.model import Encoder
from f2llm.module import F2LLMModule
from f2llm.schedule import cosine_with_warmup
from tests.conftest import compose_train, copy_encoder, tiny_encoder

STEPS = 5


def _model() -> nn.Linear:
    torch.manual_seed(0)
    # 8192 weights: above bitsandbytes' min_8bit_size, so the weight's moments are 8-bit.
    return nn.Linear(128, 64)


def _train(optimizer_factory: Callable[..., Optimizer],
           model: nn.Linear) -> tuple[list[float], Optimizer]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 128, generator=generator)
    y = torch.randn(32, 64, generator=generator)
    optimizer = optimizer_factory(params=model.parameters())
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, optimizer


@pytest.mark.parametrize("name", ["adamw8bit", "paged_adamw8bit"])
@pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")
def test_8bit_optimizer_config_steps_like_adamw(name: str) -> None:
    # The default experiment picks optimizer=adamw_fused; choosing another replaces it whole.
    cfg = compose_train([f"optimizer={name}"])
    reference_cfg = compose_train(["optimizer=adamw"])
    assert cfg.optimizer.lr == reference_cfg.optimizer.lr
    assert list(cfg.optimizer.betas) == list(reference_cfg.optimizer.betas)

    model = _model()
    start = model.weight.detach().clone()
    losses, optimizer = _train(instantiate(cfg.optimizer), model)
    assert losses[-1] < losses[0]
    state = optimizer.state[model.weight]
    assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8

    # Same direction as 32-bit AdamW with the same settings; 8-bit moments round the step.
    reference = _model()
    _train(instantiate(reference_cfg.optimizer), reference)
    ours = (model.weight.detach() - start).flatten()
    theirs = (reference.weight.detach() - start).flatten()
    assert nn.functional.cosine_similarity(ours, theirs, dim=0) > 0.99


def _module(scale: float, encoder: Encoder | None = None) -> F2LLMModule:
    cfg = compose_train([])
    return F2LLMModule(encoder=encoder or tiny_encoder(), objective=instantiate(cfg.objective),
                       optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01),
                       embedding_lr_scale=scale)


def _one_step(module: F2LLMModule) -> dict[str, torch.Tensor]:
    """Each parameter's change after one AdamW step on the same gradients, with the
    scheduler the default uses, stepped 3 times first (warmup 2, then cosine)."""
    optimizer = module.optimizer_factory(params=module.param_groups())
    scheduler = cosine_with_warmup(optimizer, warmup_steps=2, total_steps=10, min_lr=1e-5)
    for _ in range(3):
        scheduler.step()
    start = {n: p.detach().clone() for n, p in module.named_parameters()}
    generator = torch.Generator().manual_seed(0)
    for p in module.parameters():
        p.grad = torch.randn(p.shape, generator=generator)
    optimizer.step()
    return {n: p.detach() - start[n] for n, p in module.named_parameters()}


def test_embedding_lr_scale_steps_the_table_at_a_multiple_of_the_lr() -> None:
    plain = _module(1.0)
    scaled = _module(4.0, copy_encoder(plain.encoder))
    assert all(isinstance(p, torch.Tensor) for p in plain.param_groups())  # the recipe: one lr
    groups = scaled.param_groups()
    table = scaled.encoder.backbone.get_input_embeddings().weight
    assert [len(g["params"]) for g in groups] == [len(list(scaled.parameters())) - 1, 1]
    assert groups[1]["params"][0] is table and groups[1]["lr"] == 4e-3
    a, b = _one_step(plain), _one_step(scaled)
    name = "encoder.backbone.embed_tokens.weight"
    # Adam's step and the decoupled weight decay both scale with the lr: 4x, at every step of
    # the schedule (LambdaLR scales each group's own lr).
    torch.testing.assert_close(b[name], 4 * a[name], rtol=1e-4, atol=1e-9)
    for n in a:
        if n != name:
            torch.testing.assert_close(b[n], a[n], rtol=0, atol=0)


def test_embedding_lr_scale_with_a_frozen_table_and_bad_values() -> None:
    module = _module(4.0)
    module.encoder.backbone.get_input_embeddings().weight.requires_grad_(False)  # as LoRA
    (group,) = module.param_groups()
    assert "lr" not in group
    with pytest.raises(ValueError, match="embedding_lr_scale must be > 0"):
        _module(0.0)
