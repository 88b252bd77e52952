"""User data: the datasets a manifest lists, checked and combined into one memory-mapped file.

A manifest (YAML or JSON) lists datasets: public F2LLM-v2 parquet, JSONL or `datasets` folders,
each with its format, language (or language column) and instruction; `readers` reads and checks
each one, `readers.write_corpus` combines them into `<out_dir>/corpus.arrow`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from f2llm.data.corpus import Corpus, TrainingDataset
from f2llm.data.corpus_io import build_lock, read_corpus, write_json
from f2llm.data.readers import DatasetSpec, check_spec, write_corpus
from f2llm.data.records import (
    EMPTY_FILE,
    FILE_NOT_FOUND,
    INVALID_ENTRY,
    INVALID_UTF8,
    MALFORMED_JSON,
    MISSING_FIELD,
    UNREADABLE_FILE,
    WRONG_TYPE,
    DataError,
    SkipReport,
)
from f2llm.data.sources.registry import register

log = logging.getLogger(__name__)

MANIFEST_KEYS = ("name", "path", "format", "language", "language_column", "instruction", "split",
                 "extra_columns")


@register("manifest")
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
    report = SkipReport()
    with build_lock(out):  # other ranks and runs wait, then reuse the file
        path = write_corpus(specs, out / "corpus.arrow", num_negatives, on_bad_record, report,
                            extra_languages)
    corpus = read_corpus(path)
    train = [TrainingDataset(e.name, path, e.format, e.instruction)
             for e in corpus.datasets.values()]
    write_json(out / "skip_report.json", report.to_dict())
    if report.skipped:
        log.warning("skipped %d bad records (data.on_bad_record=skip):\n%s", report.skipped,
                    report.summary())
    return Corpus(train, {task: Path(p) for task, p in (val or {}).items()},
                  list(class_labels or []), report)


def read_manifest(path: str | Path, extra_languages: Collection[str] = ()) -> list[DatasetSpec]:
    """Dataset specs from a YAML or JSON manifest: a list of entries, or `{datasets: [...]}`.

    Entry keys: path (relative to the manifest's folder), format, and language or
    language_column; optional name, instruction, split, extra_columns. Every problem raises,
    naming the entry (1-based) and key; listed files must exist.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(file, FILE_NOT_FOUND)
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(file, INVALID_UTF8, f"at byte {e.start}") from None
    if not text.strip():
        raise DataError(file, EMPTY_FILE, "no datasets listed")
    data = _parse_manifest(file, text)
    entries = data.get("datasets") if isinstance(data, dict) else data
    if isinstance(data, dict) and set(data) != {"datasets"}:
        raise DataError(file, INVALID_ENTRY, "a manifest is a list of datasets or a "
                        f"mapping with the one key 'datasets', got keys {sorted(data)}")
    if not isinstance(entries, list):
        raise DataError(file, INVALID_ENTRY, "expected a list of datasets")
    if not entries:
        raise DataError(file, EMPTY_FILE, "no datasets listed")
    specs: list[DatasetSpec] = []
    names: set[str] = set()
    for i, entry in enumerate(entries, 1):
        spec = _manifest_entry(file, i, entry, extra_languages)
        if spec.name in names:
            raise DataError(file, INVALID_ENTRY, f"dataset name {spec.name!r} is used "
                            "twice", i, "name", "entry")
        names.add(spec.name)
        specs.append(spec)
    return specs


def _parse_manifest(file: Path, text: str) -> Any:
    if file.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(file, MALFORMED_JSON, f"{e.msg} (column {e.colno})",
                            e.lineno, row_kind="line") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise DataError(file, UNREADABLE_FILE, f"invalid YAML: "
                        f"{getattr(e, 'problem', None) or e}", line, row_kind="line"
                        ) from None


def _manifest_entry(file: Path, i: int, entry: Any, extra_languages: Collection[str]
                    ) -> DatasetSpec:
    def fail(reason: str, detail: str = "", key: str | None = None) -> DataError:
        return DataError(file, reason, detail, i, key, "entry")

    if not isinstance(entry, dict):
        raise fail(INVALID_ENTRY, f"expected a mapping of {', '.join(MANIFEST_KEYS)}")
    unknown = [k for k in entry if k not in MANIFEST_KEYS]
    if unknown:
        raise fail(INVALID_ENTRY, f"unknown key; valid keys: {', '.join(MANIFEST_KEYS)}",
                   str(unknown[0]))
    for key in ("path", "format"):
        if entry.get(key) is None:
            raise fail(MISSING_FIELD, key=key)
    for key in ("name", "path", "format", "language", "language_column", "instruction", "split"):
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            # YAML 1.1 reads the Norwegian code `no` (and yes/on/off) as a boolean.
            hint = "; quote it, e.g. 'no'" if isinstance(value, bool) else ""
            raise fail(WRONG_TYPE, f"got {type(value).__name__} {value!r}, expected a string"
                                   f"{hint}", key)
    extra = entry.get("extra_columns") or []
    if not isinstance(extra, list) or not all(isinstance(c, str) for c in extra):
        raise fail(WRONG_TYPE, "expected a list of column names", "extra_columns")
    data_path = Path(entry["path"])
    if not data_path.is_absolute():
        data_path = file.parent / data_path
    spec = DatasetSpec(
        path=data_path, format=entry["format"], name=entry.get("name") or "",
        language=entry.get("language"), language_column=entry.get("language_column"),
        instruction=entry.get("instruction"), split=entry.get("split"),
        extra_columns=tuple(extra),
    )
    try:
        check_spec(spec, extra_languages)
    except DataError as e:
        raise fail(e.reason, e.detail, e.field) from None
    if not spec.path.exists():
        raise fail(FILE_NOT_FOUND, str(spec.path), "path")
    return spec
