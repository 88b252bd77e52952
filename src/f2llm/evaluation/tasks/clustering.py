"""Clustering: k-means per language, V-measure against the software component."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from f2llm.evaluation.clustering import clustering_scores
from f2llm.evaluation.tasks.base import HeldoutTask, Table, register

if TYPE_CHECKING:
    from f2llm.data.corpus import Corpus


@register
class ComponentClustering(HeldoutTask):
    name = "clustering"
    sets = ("clustering/text",)
    instructed: ClassVar[Mapping[str, str]] = {"clustering/text": "clustering"}
    main_metric = "v_measure"

    def texts(self, table: Table, corpus: Corpus) -> dict[str, list[str]]:
        return {"clustering/text": table["text"]}

    def score(self, embeddings: Mapping[str, Tensor], table: Table, dims: Sequence[int]
              ) -> tuple[dict[str, float], Any]:
        return clustering_scores(embeddings["clustering/text"], table["label"], dims,
                                 groups=table["language"]), None
