"""Training on user data from a manifest: public-layout parquet plus JSONL, two languages,
a bad record skipped and reported (in the run folder), both datasets trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import open_dict

from f2llm.train import train
from tests.conftest import compose_train, records, tiny_overrides, write_jsonl


def test_manifest_datasets_train_with_a_skip_report(tmp_path: Path, locale_dir: Path) -> None:
    data = tmp_path / "user"
    data.mkdir()
    # Retrieval in the public layout (24 negatives), English and German rows.
    table = records(64, 24)
    table["lang"] = ["en"] * 32 + ["de"] * 32
    pq.write_table(pa.table(table), data / "retrieval.parquet")
    rows = [{"query": f"text {i}", "passage": "positive label", "negative_1": "negative label"}
            for i in range(40)]
    rows[7]["negative_1"] = ""  # a bad record
    write_jsonl(data / "labels.jsonl", rows)
    (data / "manifest.yaml").write_text(
        "datasets:\n"
        "  - {path: retrieval.parquet, format: retrieval, language_column: lang}\n"
        "  - {path: labels.jsonl, format: classification, language: fr,\n"
        "     instruction: Classify the text}\n")
    gettext_only = ("data.corpus.", "data.stages")
    overrides = [o for o in tiny_overrides(tmp_path, locale_dir, **{
        "data.batch_size": 8, "data.num_workers": 0, "data.alpha": 0.0,
        "trainer.max_steps": 6, "trainer.val_check_interval": 100,
    }) if not o.startswith(gettext_only)]
    overrides += ["data=manifest", f"data.corpus.manifest={data / 'manifest.yaml'}",
                  "data.corpus.on_bad_record=skip"]
    cfg = compose_train(overrides)
    with open_dict(cfg):
        cfg.final_validate = False
        cfg.data.stages = None  # the default experiment's gettext stages do not apply
    train(cfg)
    run = Path(cfg.paths.output_dir)
    report = json.loads((run / "skip_report.json").read_text())
    assert json.dumps(report).count("labels.jsonl") >= 1
    mix = json.loads((run / "data_mix.json").read_text())
    assert set(mix["by_dataset"]) == {"retrieval", "labels"}
    assert set(mix["by_language"]) == {"en", "de", "fr"}
