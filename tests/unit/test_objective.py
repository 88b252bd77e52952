"""The F2LLM objective equals sentence-transformers' losses on the same tensors."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import math
from collections.abc import Callable
from functools import partial

import pytest
import torch
import torch.distributed as dist
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import (
    MatryoshkaLoss,
    MSELoss,
    MultipleNegativesRankingLoss,
)
from sentence_transformers.util import cos_sim
from torch import Tensor, nn

from f2llm.objective import (
    F2LLMObjective,
    cosine_logits,
    distillation_loss,
    hard_negative_loss,
    inbatch_loss,
    matryoshka_dims,
    matryoshka_loss,
    matryoshka_weights,
)

B, K, D = 4, 3, 32
TAU = 0.05
# Rows of the fixed table: queries, then positives, then each query's K negatives.
Q_ROWS = torch.arange(B)
P_ROWS = torch.arange(B, 2 * B)
N_ROWS = torch.arange(2 * B, 2 * B + B * K).reshape(B, K)
TOL = {"rtol": 1e-6, "atol": 1e-9}


class _Rows(nn.Module):
    """Looks up rows of a fixed table: `input_ids[:, 0]` are row indices."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.table = nn.Embedding.from_pretrained(table.clone(), freeze=False)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        features["sentence_embedding"] = self.table(features["input_ids"][:, 0])
        return features

    def get_embedding_dimension(self) -> int:
        return self.table.embedding_dim


def _st_model(table: Tensor) -> SentenceTransformer:
    return SentenceTransformer(modules=[_Rows(table)], device="cpu")


def _features(rows: Tensor) -> dict[str, Tensor]:
    return {"input_ids": rows[:, None], "attention_mask": torch.ones(len(rows), 1)}


def _columns(i: Tensor | slice = slice(None), negatives: bool = True) -> list[dict]:
    """ST input columns (anchor, positive[, negative_1..K]) for the queries `i`."""
    columns = [_features(Q_ROWS[i]), _features(P_ROWS[i])]
    if negatives:
        columns += [_features(N_ROWS[i, k]) for k in range(K)]
    return columns


def _ours(table: Tensor, fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> tuple:
    """Value and gradient w.r.t. the table of `fn(query, positive, negatives)`."""
    weight = table.clone().requires_grad_()
    loss = fn(weight[Q_ROWS], weight[P_ROWS], weight[N_ROWS])
    loss.backward()
    return loss.detach(), weight.grad


def _theirs(table: Tensor, fn: Callable[[SentenceTransformer], Tensor]) -> tuple:
    """Value and gradient w.r.t. the table of an ST loss, `fn(model)`."""
    model = _st_model(table)
    loss = fn(model)
    loss.backward()
    return loss.detach(), model[0].table.weight.grad


def _assert_same(ours: tuple, theirs: tuple) -> None:
    torch.testing.assert_close(ours[0], theirs[0], **TOL)
    torch.testing.assert_close(ours[1], theirs[1], **TOL)


@pytest.fixture
def table() -> Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2 * B + B * K, D, generator=generator, dtype=torch.float64)


def test_cosine_logits_equal_st_cos_sim(table: Tensor) -> None:
    a, b = table[Q_ROWS], table[P_ROWS]
    torch.testing.assert_close(cosine_logits(a, b, TAU), cos_sim(a, b) / TAU, **TOL)


def test_inbatch_loss_equals_mnrl(table: Tensor) -> None:
    ours = _ours(table, lambda q, p, n: inbatch_loss(q, p, tau=TAU))

    def theirs(model: SentenceTransformer) -> Tensor:
        mnrl = MultipleNegativesRankingLoss(model, scale=1 / TAU)
        return mnrl(_columns(negatives=False), None)

    _assert_same(ours, _theirs(table, theirs))


def test_inbatch_loss_gather_is_plain_outside_distributed(table: Tensor) -> None:
    assert not dist.is_initialized()
    gathered = _ours(table, lambda q, p, n: inbatch_loss(q, p, TAU, gather=True))
    plain = _ours(table, lambda q, p, n: inbatch_loss(q, p, TAU, gather=False))
    _assert_same(gathered, plain)


def test_inbatch_loss_gather_in_a_one_process_group(table: Tensor, tmp_path) -> None:
    plain = _ours(table, lambda q, p, n: inbatch_loss(q, p, TAU, gather=False))
    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        gathered = _ours(table, lambda q, p, n: inbatch_loss(q, p, TAU, gather=True))
    finally:
        dist.destroy_process_group()
    _assert_same(gathered, plain)


def test_hard_negative_loss_equals_per_query_mnrl(table: Tensor) -> None:
    ours = _ours(table, partial(hard_negative_loss, tau=TAU))

    def theirs(model: SentenceTransformer) -> Tensor:
        # A batch of one: the candidates are exactly its positive and its negatives.
        mnrl = MultipleNegativesRankingLoss(model, scale=1 / TAU)
        return sum(mnrl(_columns(slice(i, i + 1)), None) for i in range(B)) / B

    _assert_same(ours, _theirs(table, theirs))


def test_hard_negative_loss_rejects_misshapen_negatives(table: Tensor) -> None:
    with pytest.raises(ValueError, match="negatives must be"):
        hard_negative_loss(table[Q_ROWS], table[P_ROWS], table[N_ROWS[:, 0]])


@pytest.mark.parametrize(
    ("hidden", "dims"),
    [
        (320, [320, 256, 128, 64, 32, 16, 8]),
        (256, [256, 128, 64, 32, 16, 8]),
        (1024, [1024, 512, 256, 128, 64, 32, 16, 8]),
        (896, [896, 512, 256, 128, 64, 32, 16, 8]),
        (5120, [5120, 4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8]),
        (8, [8]),
    ],
)
def test_matryoshka_dims(hidden: int, dims: list[int]) -> None:
    assert matryoshka_dims(hidden) == dims


def test_matryoshka_dims_min_dim() -> None:
    assert matryoshka_dims(100, min_dim=16) == [100, 64, 32, 16]
    with pytest.raises(ValueError, match="power of two"):
        matryoshka_dims(100, min_dim=12)


def test_matryoshka_weights_by_hand() -> None:
    # 1 / (n * sqrt(320 / dim)) for n = 1..7, worked out on paper.
    expected = [
        1.0,
        0.4472135955,  # 1 / (2 * sqrt(1.25))
        0.2108185107,  # 1 / (3 * sqrt(2.5))
        0.1118033989,  # 1 / (4 * sqrt(5))
        0.0632455532,  # 1 / (5 * sqrt(10))
        0.0372677996,  # 1 / (6 * sqrt(20))
        0.0225876975,  # 1 / (7 * sqrt(40))
    ]
    assert matryoshka_weights(matryoshka_dims(320), 320) == pytest.approx(expected)
    weights_1024 = matryoshka_weights(matryoshka_dims(1024), 1024)
    assert weights_1024[:3] == pytest.approx([1.0, 1 / (2 * math.sqrt(2)), 1 / 6])


def test_matryoshka_weights_follow_the_order_of_dims() -> None:
    descending = dict(zip([320, 256, 8], matryoshka_weights([320, 256, 8], 320), strict=False))
    shuffled = dict(zip([8, 320, 256], matryoshka_weights([8, 320, 256], 320), strict=False))
    assert shuffled == descending
    assert descending[8] == pytest.approx(1 / (3 * math.sqrt(40)))


def test_matryoshka_weights_reject_bad_dims() -> None:
    with pytest.raises(ValueError, match="distinct"):
        matryoshka_weights([8, 8], 16)
    with pytest.raises(ValueError, match="lie in"):
        matryoshka_weights([32], 16)


def test_matryoshka_inbatch_equals_st_matryoshka_mnrl(table: Tensor) -> None:
    dims = matryoshka_dims(D)
    weights = matryoshka_weights(dims, D)
    loss_fn = partial(inbatch_loss, tau=TAU)
    ours = _ours(
        table, lambda q, p, n: matryoshka_loss(loss_fn, [q, p], dims, weights)[0]
    )

    def theirs(model: SentenceTransformer) -> Tensor:
        mnrl = MultipleNegativesRankingLoss(model, scale=1 / TAU)
        mrl = MatryoshkaLoss(
            model, mnrl, matryoshka_dims=dims, matryoshka_weights=weights
        )
        return mrl(_columns(negatives=False), None)

    _assert_same(ours, _theirs(table, theirs))


def test_matryoshka_hard_negative_equals_per_query_st_matryoshka(table: Tensor) -> None:
    dims = [16, 32, 8]  # not sorted: weights must stay paired with their dims
    weights = matryoshka_weights(dims, D)
    loss_fn = partial(hard_negative_loss, tau=TAU)
    ours = _ours(
        table, lambda q, p, n: matryoshka_loss(loss_fn, [q, p, n], dims, weights)[0]
    )

    def theirs(model: SentenceTransformer) -> Tensor:
        mnrl = MultipleNegativesRankingLoss(model, scale=1 / TAU)
        mrl = MatryoshkaLoss(
            model, mnrl, matryoshka_dims=dims, matryoshka_weights=weights
        )
        return sum(mrl(_columns(slice(i, i + 1)), None) for i in range(B)) / B

    _assert_same(ours, _theirs(table, theirs))


def test_matryoshka_loss_per_dim_is_unweighted_and_detached(table: Tensor) -> None:
    q, p = table[Q_ROWS].requires_grad_(), table[P_ROWS]
    dims, weights = [32, 8], [1.0, 0.25]
    total, per_dim = matryoshka_loss(
        partial(inbatch_loss, tau=TAU), [q, p], dims, weights
    )
    assert list(per_dim) == dims
    for dim in dims:
        assert not per_dim[dim].requires_grad
        torch.testing.assert_close(per_dim[dim], inbatch_loss(q[:, :dim], p[:, :dim]))
    torch.testing.assert_close(total.detach(), per_dim[32] + 0.25 * per_dim[8])
    with pytest.raises(ValueError, match="exceeds"):
        matryoshka_loss(inbatch_loss, [q, p], [64], [1.0])
    with pytest.raises(ValueError, match="one weight per dim"):
        matryoshka_loss(inbatch_loss, [q, p], [32, 8], [1.0])


def test_distillation_loss_equals_st_mse(table: Tensor) -> None:
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(B, D, generator=generator, dtype=torch.float64)
    ours = _ours(table, lambda q, p, n: distillation_loss(q, teacher))
    theirs = _theirs(table, lambda model: MSELoss(model)([_features(Q_ROWS)], teacher))
    _assert_same(ours, theirs)


def test_distillation_loss_over_negatives_equals_st_mse_per_column(
    table: Tensor,
) -> None:
    # ST averages the per-column MSEs; equal column sizes make that the mean over [B, K, D].
    generator = torch.Generator().manual_seed(2)
    teacher = torch.randn(B, K, D, generator=generator, dtype=torch.float64)
    ours = _ours(table, lambda q, p, n: distillation_loss(n, teacher))
    columns = [_features(N_ROWS[:, k]) for k in range(K)]
    theirs = _theirs(table, lambda model: MSELoss(model)(columns, teacher))
    _assert_same(ours, theirs)


def test_distillation_loss_cuts_a_wider_teacher(table: Tensor) -> None:
    generator = torch.Generator().manual_seed(3)
    teacher = torch.randn(B, 3 * D, generator=generator, dtype=torch.float64)
    teacher.requires_grad_()
    student = table[Q_ROWS].clone().requires_grad_()
    loss = distillation_loss(student, teacher)
    loss.backward()
    diff = student.detach() - teacher.detach()[:, :D]
    torch.testing.assert_close(loss.detach(), (diff**2).sum() / (B * D), **TOL)
    torch.testing.assert_close(student.grad, 2 * diff / (B * D), **TOL)
    assert teacher.grad is None
    with pytest.raises(ValueError, match="narrower than the student's"):
        distillation_loss(teacher.detach(), student.detach())


def _batch(table: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return table[Q_ROWS], table[P_ROWS], table[N_ROWS]


def test_objective_components_add_up(table: Tensor) -> None:
    q, p, n = _batch(table)
    generator = torch.Generator().manual_seed(4)
    teacher = {
        name: torch.randn(*x.shape[:-1], 2 * D, generator=generator, dtype=x.dtype)
        for name, x in {"query": q, "positive": p, "negatives": n}.items()
    }
    loss, logs = F2LLMObjective(kd_weight=0.5)(
        q, p, n, use_inbatch=True, teacher=teacher
    )

    dims = matryoshka_dims(D)
    assert set(logs) == {"loss", "loss_inbatch", "loss_hard", "loss_kd"} | {
        f"loss@{d}" for d in dims
    }
    assert all(not value.requires_grad for value in logs.values())
    weights = matryoshka_weights(dims, D)
    inbatch = matryoshka_loss(partial(inbatch_loss, tau=TAU), [q, p], dims, weights)[0]
    hard = matryoshka_loss(
        partial(hard_negative_loss, tau=TAU), [q, p, n], dims, weights
    )[0]
    kd = sum(distillation_loss(x, teacher[k]) for k, x in zip(teacher, (q, p, n), strict=False))
    torch.testing.assert_close(logs["loss_inbatch"], inbatch, **TOL)
    torch.testing.assert_close(logs["loss_hard"], hard, **TOL)
    torch.testing.assert_close(logs["loss_kd"], kd, **TOL)
    torch.testing.assert_close(loss, inbatch + hard + 0.5 * kd, **TOL)
    for d in dims:
        at_d = inbatch_loss(q[:, :d], p[:, :d]) + hard_negative_loss(
            q[:, :d], p[:, :d], n[..., :d]
        )
        torch.testing.assert_close(logs[f"loss@{d}"], at_d, **TOL)


def test_objective_gradient_equals_sum_of_terms(table: Tensor) -> None:
    dims, weights = [32, 16], [1.0, 0.5]
    objective = F2LLMObjective(mrl_dims=dims, mrl_weights=weights)
    ours = _ours(table, lambda q, p, n: objective(q, p, n, use_inbatch=True)[0])

    def by_terms(q: Tensor, p: Tensor, n: Tensor) -> Tensor:
        inbatch = partial(inbatch_loss, tau=TAU)
        hard = partial(hard_negative_loss, tau=TAU)
        return (
            matryoshka_loss(inbatch, [q, p], dims, weights)[0]
            + matryoshka_loss(hard, [q, p, n], dims, weights)[0]
        )

    _assert_same(ours, _ours(table, by_terms))


def test_objective_without_inbatch_is_the_hard_negative_term(table: Tensor) -> None:
    q, p, n = _batch(table)
    loss, logs = F2LLMObjective()(q, p, n, use_inbatch=False)
    assert set(logs) == {"loss", "loss_hard"} | {
        f"loss@{d}" for d in matryoshka_dims(D)
    }
    torch.testing.assert_close(loss, logs["loss_hard"])
    torch.testing.assert_close(
        logs["loss@8"], hard_negative_loss(q[:, :8], p[:, :8], n[..., :8])
    )


@pytest.mark.parametrize("negatives", [None, torch.empty(B, 0, D, dtype=torch.float64)])
def test_objective_without_negatives_is_the_inbatch_term(
    table: Tensor, negatives: Tensor | None
) -> None:
    q, p, _ = _batch(table)
    loss, logs = F2LLMObjective()(q, p, negatives, use_inbatch=True)
    assert "loss_hard" not in logs and "loss_kd" not in logs
    torch.testing.assert_close(loss, logs["loss_inbatch"])


def test_objective_kd_term_appears_with_teacher(table: Tensor) -> None:
    q, p, n = _batch(table)
    objective = F2LLMObjective(kd_weight=2.0)
    without, logs = objective(q, p, n, use_inbatch=True)
    assert "loss_kd" not in logs
    teacher = {"query": q + 1, "positive": p, "negatives": n}
    with_teacher, logs = objective(q, p, n, use_inbatch=True, teacher=teacher)
    # Only the query differs from its teacher, by 1 in every feature.
    torch.testing.assert_close(logs["loss_kd"], torch.tensor(1.0, dtype=q.dtype))
    torch.testing.assert_close(with_teacher, without + 2.0)
    with pytest.raises(ValueError, match="negatives"):
        objective(q, p, n, use_inbatch=True, teacher={"query": q, "positive": p})


def test_objective_rejects_nothing_to_optimise_and_bad_weights(table: Tensor) -> None:
    q, p, _ = _batch(table)
    with pytest.raises(ValueError, match="nothing to optimise"):
        F2LLMObjective()(q, p, None, use_inbatch=False)
    with pytest.raises(ValueError, match="mrl_weights"):
        F2LLMObjective(mrl_weights=[1.0])
