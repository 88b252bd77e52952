"""User data: the datasets a manifest lists, checked and combined into one memory-mapped file."""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from pathlib import Path

from f2llm.data.corpus import Corpus, TrainingDataset
from f2llm.data.readers import read_corpus, read_manifest, write_corpus
from f2llm.data.records import SkipReport

log = logging.getLogger(__name__)


def build_manifest_corpus(
    manifest: str | Path,
    out_dir: str | Path,
    num_negatives: Mapping[str, int] | None = None,
    on_bad_record: str = "raise",
    extra_languages: Collection[str] = (),
    val: Mapping[str, str] | None = None,
    class_labels: list[str] | None = None,
) -> Corpus:
    """Read every dataset of `manifest` (public F2LLM-v2 parquet, JSONL or `datasets` folders)
    into `<out_dir>/corpus.arrow`, reused while the inputs and options are unchanged.

    Returns the `Corpus`: training datasets (format and instruction from the
    manifest), held-out sets from `val` (task -> parquet, optional) and the skip report, also
    written to `<out_dir>/skip_report.json`. With `on_bad_record: skip` nothing disappears
    silently: every skipped record is counted per file and reason.
    """
    specs = read_manifest(manifest, extra_languages)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = SkipReport()
    path = write_corpus(specs, out / "corpus.arrow", num_negatives, on_bad_record, report,
                        extra_languages)
    corpus = read_corpus(path)
    train = [TrainingDataset(e.name, path, e.format, e.instruction)
             for e in corpus.datasets.values()]
    (out / "skip_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    if report.skipped:
        log.warning("skipped %d bad records (data.on_bad_record=skip):\n%s", report.skipped,
                    report.summary())
    return Corpus(train, {task: Path(p) for task, p in (val or {}).items()},
                  list(class_labels or []), report)
