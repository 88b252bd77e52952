"""Classification: each text gets the label (corpus `class_labels`) whose embedding is nearer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from f2llm.evaluation.classification import nearest_label_accuracy
from f2llm.evaluation.tasks.base import HeldoutTask, Table, register

if TYPE_CHECKING:
    from f2llm.data.corpus import Corpus


@register
class LabelClassification(HeldoutTask):
    name = "classification"
    sets = ("classification/text", "classification/labels")
    instructed: ClassVar[Mapping[str, str]] = {"classification/text": "classification"}
    main_metric = "accuracy"

    def texts(self, table: Table, corpus: Corpus) -> dict[str, list[str]]:
        if not corpus.class_labels:
            raise ValueError("the held-out classification set needs the corpus's label texts "
                             "(class_labels), in the order of its `label` column")
        return {"classification/text": table["text"],
                "classification/labels": list(corpus.class_labels)}

    def score(self, embeddings: Mapping[str, Tensor], table: Table, dims: Sequence[int]
              ) -> tuple[dict[str, float], Any]:
        return nearest_label_accuracy(embeddings["classification/text"],
                                      embeddings["classification/labels"],
                                      torch.as_tensor(table["label"]), dims), None
