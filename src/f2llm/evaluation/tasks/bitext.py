"""Bitext mining: each sentence's translation among its language's pool, both directions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from f2llm.evaluation.bitext import bitext_accuracy_by_dim, mean_over_languages
from f2llm.evaluation.tasks.base import HeldoutTask, Table, register

if TYPE_CHECKING:
    from f2llm.data.corpus import Corpus


@register
class BitextMining(HeldoutTask):
    name = "bitext"
    sets = ("bitext/source", "bitext/target")
    main_metric = "accuracy"

    def texts(self, table: Table, corpus: Corpus) -> dict[str, list[str]]:
        return {"bitext/source": table["source"], "bitext/target": table["target"]}

    def score(self, embeddings: Mapping[str, Tensor], table: Table, dims: Sequence[int]
              ) -> tuple[dict[str, float], Any]:
        per_language = bitext_accuracy_by_dim(embeddings["bitext/source"],
                                              embeddings["bitext/target"], table["language"], dims)
        return ({f"accuracy@{d}": mean_over_languages(v) for d, v in per_language.items()},
                per_language)
