"""What a corpus source hands the datamodule and `eval.py`: training datasets and held-out sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from f2llm.data.validation import SkipReport


@dataclass(frozen=True)
class TrainingDataset:
    """One training dataset on disk: a parquet of records in one of the canonical formats (or
    one dataset of a combined corpus file, `readers.write_corpus`)."""

    name: str
    path: Path
    format: str
    instruction: str | None = None


@dataclass
class Corpus:
    """A corpus source's result (`build_gettext_corpus`, `build_manifest_corpus`).

    `val` maps a held-out set's name to its parquet; each held-out task
    (`f2llm.evaluation.tasks`) reads the set it names, and a task whose set is absent is not
    run. `class_labels` are the label texts of the classification set; `skip_report` counts the
    records a reader skipped (None: the source skips nothing). `pretokenized` holds the stored
    token ids of datasets that come tokenized (`f2llm_v2_corpus.PretokenizedDocs`): their texts
    are never tokenized again.
    """

    train: list[TrainingDataset]
    val: dict[str, Path] = field(default_factory=dict)
    class_labels: list[str] = field(default_factory=list)
    skip_report: SkipReport | None = None
    pretokenized: Any = None

    def instructions(self) -> dict[str, str]:
        """Dataset name -> its query instruction, for the datasets that have one."""
        return {d.name: d.instruction for d in self.train if d.instruction}

    def dataset_of_format(self) -> dict[str, TrainingDataset]:
        """Format -> a training dataset of that format (the last listed wins): whose
        instruction a held-out task's queries get."""
        return {d.format: d for d in self.train}
