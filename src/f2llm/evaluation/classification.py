"""Classification accuracy at every Matryoshka dim: nearest label text, or a linear probe."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor
from torch.nn import functional as F


def _unit(x: Tensor, dim: int) -> Tensor:
    return F.normalize(x[..., :dim].float(), dim=-1)


def nearest_label_accuracy(
    texts: Tensor, label_embeddings: Tensor, labels: Sequence[int] | Tensor, dims: Sequence[int]
) -> dict[str, float]:
    """Accuracy per dim, keyed `accuracy@<dim>`: a text is right when the embedding of its own
    label text (row `labels[i]` of `label_embeddings`) is the most cosine-similar label.

    With two label texts this is the two-way classification format of F2LLM-v2.
    """
    gold = torch.as_tensor(labels, dtype=torch.long)
    out: dict[str, float] = {}
    for dim in dims:
        predicted = (_unit(texts, dim) @ _unit(label_embeddings, dim).T).argmax(1)
        out[f"accuracy@{dim}"] = float((predicted == gold).float().mean())
    return out


def two_way_accuracy(
    texts: Tensor, positives: Tensor, negatives: Tensor, dims: Sequence[int]
) -> dict[str, float]:
    """Accuracy per dim, keyed `accuracy@<dim>`, on records (text, matching label text,
    other label text): right when the text is more cosine-similar to its positive."""
    out: dict[str, float] = {}
    for dim in dims:
        t = _unit(texts, dim)
        pos = (t * _unit(positives, dim)).sum(-1)
        neg = (t * _unit(negatives, dim)).sum(-1)
        out[f"accuracy@{dim}"] = float((pos > neg).float().mean())
    return out


def linear_probe_accuracy(
    train: Tensor,
    train_labels: Sequence[int] | Tensor,
    test: Tensor,
    test_labels: Sequence[int] | Tensor,
    dims: Sequence[int],
    max_iter: int = 100,
) -> dict[str, float]:
    """Test accuracy of a logistic regression fitted on the train embeddings (the MTEB
    classification protocol), per dim, keyed `linear_probe_accuracy@<dim>`."""
    y_train = torch.as_tensor(train_labels).numpy()
    y_test = torch.as_tensor(test_labels).numpy()
    out: dict[str, float] = {}
    for dim in dims:
        probe = LogisticRegression(max_iter=max_iter)
        probe.fit(_unit(train, dim).numpy(), y_train)
        out[f"linear_probe_accuracy@{dim}"] = float(probe.score(_unit(test, dim).numpy(), y_test))
    return out
