"""The skip report accounts for every record missing from the corpus, and only for those.

Bad records of several kinds in a JSONL file, a parquet file and a `datasets` folder, read
through a manifest in skip mode: per file, records read minus records skipped is the number of
rows in the corpus, the rows kept are exactly the good ones, and the report written to the run
folder (and the one restored with a cached corpus) says the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from f2llm.data.corpus_io import read_corpus
from f2llm.data.sources.manifest import build_manifest_corpus
from tests.conftest import good, write_jsonl


def classification(query: str, lang: str = "fr", **fields: object) -> dict:
    return {"query": query, "passage": "label", "negative_1": "other label", "lang": lang,
            **fields}


def sources(folder: Path) -> dict[str, set[str]]:
    """Writes the three datasets and the manifest; returns the good queries per dataset."""
    import datasets

    folder.mkdir()
    jsonl = [good(query=f"j{i}", lang="fr") for i in range(6)]
    jsonl[1]["query"] = ""                  # empty string
    jsonl[3] = "{not json"                  # malformed JSON
    jsonl[4]["lang"] = "xx"                 # unknown language code
    del jsonl[5]["passage"]                 # missing field
    write_jsonl(folder / "mixed.jsonl", [*jsonl, good(query="j6", lang="de")])

    rows = [classification(f"p{i}") for i in range(8)]
    rows[0]["passage"] = ""
    rows[2]["negative_1"] = None
    rows[5]["lang"] = "zz"
    pq.write_table(pa.Table.from_pylist(rows), folder / "labels.parquet")

    rows = [classification(f"d{i}", lang="de") for i in range(5)]
    rows[4]["query"] = ""
    datasets.Dataset.from_list(rows).save_to_disk(str(folder / "topics"))

    (folder / "manifest.yaml").write_text(
        "datasets:\n"
        "  - {path: mixed.jsonl, format: retrieval, language_column: lang}\n"
        "  - {path: labels.parquet, format: classification, language_column: lang}\n"
        "  - {path: topics, format: classification, language_column: lang}\n")
    return {"mixed": {"j0", "j2", "j6"},
            "labels": {"p1", "p3", "p4", "p6", "p7"},
            "topics": {"d0", "d1", "d2", "d3"}}


def test_skip_report_counts_equal_the_records_missing_from_the_corpus(tmp_path: Path) -> None:
    kept = sources(tmp_path / "user")
    files = {"mixed": tmp_path / "user" / "mixed.jsonl",
             "labels": tmp_path / "user" / "labels.parquet",
             "topics": tmp_path / "user" / "topics"}
    out = tmp_path / "corpus"
    found = build_manifest_corpus(tmp_path / "user" / "manifest.yaml", out,
                                  on_bad_record="skip")
    report = found.skip_report
    corpus = read_corpus(out / "corpus.arrow")
    written = json.loads((out / "skip_report.json").read_text())
    for name, path in files.items():
        table = corpus.dataset(name)
        assert set(table.column("query").to_pylist()) == kept[name]
        read, skipped = report.records[str(path)], report.skipped_in(path)
        assert read - skipped == table.num_rows == len(kept[name]), name
        entry = written["files"][str(path)]
        assert entry["records"] == read
        assert sum(r["count"] for r in entry["skipped"].values()) == skipped
    assert report.skipped == sum(report.records.values()) - corpus.table.num_rows == 8
    assert written["skipped"] == report.skipped
    assert written["records"] == sum(report.records.values())

    # A second build reuses the corpus file; the report it restores is the same.
    again = build_manifest_corpus(tmp_path / "user" / "manifest.yaml", out, on_bad_record="skip")
    assert again.skip_report.to_dict() == report.to_dict()
