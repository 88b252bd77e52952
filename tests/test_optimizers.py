"""The bitsandbytes 8-bit optimizer configs compose and train a small module on the CPU."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.optim import Optimizer

from tests.conftest import compose_train

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
