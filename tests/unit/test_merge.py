"""Checkpoint merging: soup and slerp maths on tiny tensors and models (`merge.py` on a real
run's checkpoints: tests/commands/test_merge.py)."""

from __future__ import annotations

import math

import pytest
import torch

from f2llm.merge import slerp, slerp_merge, soup
from tests.conftest import (
    tiny_encoder,
)

TEXTS = ["Fichier introuvable", "Cannot open file %s", "Файл не найден", "保存"]


def tiny_states(n: int) -> list[dict[str, torch.Tensor]]:
    """n perturbed copies of a tiny encoder's weights."""
    base = tiny_encoder().state_dict()
    gen = torch.Generator().manual_seed(0)
    return [{k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
            for _ in range(n)]


def test_soup_and_slerp_of_identical_checkpoints_is_that_checkpoint() -> None:
    state = tiny_states(1)[0]
    for merged in (soup([state] * 3), slerp_merge([state] * 3)):
        assert merged.keys() == state.keys()
        for k in state:
            assert merged[k].dtype == state[k].dtype
            assert torch.equal(merged[k], state[k]), k


def test_soup_is_the_hand_computed_mean() -> None:
    a, b, c = tiny_states(3)
    merged = soup([a, b, c])
    for k in a:
        torch.testing.assert_close(merged[k], (a[k] + b[k] + c[k]) / 3, atol=1e-6, rtol=0)
    # Integer tensors are kept, and must agree.
    ids = {"ids": torch.arange(4)}
    assert torch.equal(soup([ids, ids])["ids"], ids["ids"])
    with pytest.raises(ValueError, match="integer tensor differs"):
        soup([ids, {"ids": torch.arange(4) + 1}])
    with pytest.raises(ValueError, match="other tensors"):
        soup([a, {**a, "extra": torch.zeros(1)}])


def test_slerp_endpoints_midpoint_and_colinear_case() -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen)
    torch.testing.assert_close(slerp(a, b, 0.0).float(), a, atol=1e-6, rtol=0)
    torch.testing.assert_close(slerp(a, b, 1.0).float(), b, atol=1e-6, rtol=0)
    # Orthogonal unit vectors: the midpoint is their sum over sqrt(2), still a unit vector.
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp(e1, e2, 0.5)
    torch.testing.assert_close(mid, torch.tensor([1.0, 1.0], dtype=torch.float64) / math.sqrt(2))
    assert slerp(e1, e2, 1 / 3)[1] == pytest.approx(math.sin(math.pi / 6))
    # Parallel tensors (and a zero tensor): no division by sin(0), a linear interpolation.
    torch.testing.assert_close(slerp(a, 3 * a, 0.5).float(), 2 * a)
    torch.testing.assert_close(slerp(torch.zeros(3), torch.ones(3), 0.25).float(),
                               torch.full((3,), 0.25))


def test_slerp_of_two_checkpoints_is_the_midpoint_and_of_n_is_a_running_slerp() -> None:
    a, b, c = tiny_states(3)
    linear: list[str] = []
    two = slerp_merge([a, b], linear)
    three = slerp_merge([a, b, c])
    for k in a:
        torch.testing.assert_close(two[k], slerp(a[k], b[k], 0.5).float())
        torch.testing.assert_close(three[k], slerp(slerp(a[k], b[k], 0.5), c[k], 1 / 3).float())
    # The perturbations make some tensors non-colinear: slerp is not the soup there.
    assert len(linear) < len(a)
    assert any(not torch.allclose(two[k], soup([a, b])[k]) for k in a)


