"""The public F2LLM-v2 data folder -> one memory-mapped corpus, built once per folder.

The build streams parquet batches (bounded memory: one batch of one file at a time, plus one
dataset's doc-id index in the tokenized layout; `build_raw`, `build_tokenized`), runs once per
output folder under its lock (`corpus_io.build_lock`: other ranks and runs wait, then reuse it)
and is reused while its fingerprint (file names, sizes, mtimes, recipes, options) is unchanged.
Reading a built corpus memory-maps it, and the record indices of every (dataset, language,
direction) group, stored next to it (`groups.arrow`, `corpus.StoredGroups`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from f2llm.data.corpus import Corpus, StoredGroups, TrainingDataset
from f2llm.data.corpus_io import (
    build_lock,
    corpus_metadata,
    fingerprint,
    read_corpus,
    write_json,
)
from f2llm.data.records import SkipReport, check_on_bad_record
from f2llm.data.sources.f2llm_v2.build_raw import build_raw
from f2llm.data.sources.f2llm_v2.build_tokenized import build_tokenized
from f2llm.data.sources.f2llm_v2.download import REPO_ID, download_f2llm_v2
from f2llm.data.sources.f2llm_v2.layout import Layout, find_layout, recipes_for
from f2llm.data.sources.f2llm_v2.pretokenized import PretokenizedDocs
from f2llm.data.sources.f2llm_v2.recipes import DatasetRecipe
from f2llm.data.sources.registry import register

log = logging.getLogger(__name__)

BUILD_VERSION = 2


@dataclass
class F2LLMV2Corpus(Corpus):
    """A `Corpus` with each training dataset's recipe (format, language, direction, instruction)
    as resolved from its name."""

    recipes: list[DatasetRecipe] = field(default_factory=list)


@register("f2llm_v2")
def build_f2llm_v2_corpus(
    root: str | Path,
    out_dir: str | Path,
    layout: str = "auto",
    datasets: Mapping[str, Mapping[str, Any]] | None = None,
    include: Sequence[str] | None = None,
    num_negatives: Mapping[str, int] | None = None,
    on_bad_record: str = "raise",
    download: bool = False,
    repo_id: str = REPO_ID,
    extra_languages: Collection[str] = (),
) -> F2LLMV2Corpus:
    """The datamodule's `Corpus` for the public data under `root`.

    `datasets` assigns format / language / language_column / direction / instruction by hand
    (names on no official list need a format); `include` restricts to some datasets;
    `download: true` fetches `include` (or everything) first. The corpus is built once into
    a subfolder of `out_dir` named after the source folder (a lock file makes concurrent ranks
    and runs wait) and reused by fingerprint.
    """
    if download:
        download_f2llm_v2(root, include, repo_id, "raw" if layout == "auto" else layout)
    found = find_layout(root, layout)
    recipes = recipes_for(found, datasets, include)
    mode = check_on_bad_record(on_bad_record)
    # One folder per source folder and layout: switching between copies rebuilds nothing.
    key = hashlib.sha256(f"{Path(root).resolve()}|{found.kind}".encode()).hexdigest()[:12]
    out = Path(out_dir) / f"{Path(root).resolve().name}-{found.kind}-{key}"
    built_from = fingerprint(_build_inputs(found, recipes, num_negatives, mode, extra_languages))
    corpus_path = out / "corpus.arrow"
    report = SkipReport()
    with build_lock(out):
        meta = corpus_metadata(corpus_path)
        if meta is not None and meta.get("fingerprint") == built_from:
            log.info("reusing the F2LLM-v2 corpus %s (%d records)", corpus_path,
                     sum(e["num_rows"] for e in meta["datasets"]))
        else:
            start = time.perf_counter()
            build = SkipReport()
            header = {"version": BUILD_VERSION, "fingerprint": built_from}
            if found.kind == "raw":
                meta = build_raw(found, recipes, corpus_path, num_negatives, mode, build,
                                 extra_languages, header)
            else:
                meta = build_tokenized(found, recipes, out, num_negatives, mode, build, header)
            log.info("built the F2LLM-v2 corpus %s: %d records of %d datasets in %.1f s",
                     corpus_path, sum(e["num_rows"] for e in meta["datasets"]),
                     len(meta["datasets"]), time.perf_counter() - start)
        report.update(meta["report"])
        # Each group's record indices, written once next to the corpus (covered by its
        # fingerprint) and memory-mapped by every run: startup does no per-record work.
        groups = StoredGroups(out / "groups.arrow")
        if groups.fingerprint() != built_from:
            records = read_corpus(corpus_path)
            groups = StoredGroups.write(groups.path, ((e["name"], records.dataset(e["name"]))
                                                      for e in meta["datasets"]), built_from)
    write_json(out / "skip_report.json", report.to_dict())
    recipe_of = {r.name: r for r in recipes}
    train = [TrainingDataset(e["name"], corpus_path, e["format"], e["instruction"])
             for e in meta["datasets"]]
    pretokenized = None
    if found.kind == "tokenized":
        pretokenized = PretokenizedDocs(
            out / meta["docs"], meta["eos_id"], meta["max_token_id"],
            [e["name"] for e in meta["datasets"]],
            sorted({e["instruction"] for e in meta["datasets"] if e["instruction"]}))
    return F2LLMV2Corpus(train, skip_report=report, pretokenized=pretokenized, groups=groups,
                         recipes=[recipe_of[e["name"]] for e in meta["datasets"]])


def _build_inputs(layout: Layout, recipes: Sequence[DatasetRecipe], num_negatives: Any,
                  mode: str, extra_languages: Collection[str]) -> dict[str, Any]:
    """What a build fingerprints: the folder's files (paths, sizes, mtimes), the recipes and
    the options."""
    files = [*layout.files.values(), *layout.corpus_files.values(),
             *([layout.shared_corpus] if layout.shared_corpus else [])]
    return {
        "version": BUILD_VERSION, "kind": layout.kind,
        "files": sorted([str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns]
                        for f in files),
        "recipes": [asdict(r) for r in recipes],
        "num_negatives": dict(sorted((num_negatives or {}).items())),
        "on_bad_record": mode, "extra_languages": sorted(extra_languages),
    }
