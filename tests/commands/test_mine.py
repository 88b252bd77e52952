"""Hard-negative mining for users' pairs: `mine.py` as the user types it writes our layout,
which our readers accept, and a manifest run trains on its negatives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import DictConfig
from sentence_transformers import SentenceTransformer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from f2llm.data.readers import DatasetSpec, read_dataset
from f2llm.export import export_sentence_transformers
from f2llm.mine import mine
from tests.conftest import (
    ROOT,
    TINY_SHAPE,
    compose_config,
    run_python,
    tiny_encoder,
    user_env,
    write_jsonl,
)

NOUNS = ["file", "folder", "printer", "network", "password", "window", "disk", "user",
         "keyboard", "screen", "backup", "archive"]


def user_pairs() -> dict[str, list[str]]:
    """24 English and 24 German (query, passage) pairs, as a user's file holds them."""
    query, passage, lang = [], [], []
    for i, noun in enumerate(NOUNS):
        query += [f"how do I remove a {noun}", f"wie lösche ich {noun} {i}"]
        passage += [f"To remove a {noun}, open the menu and press delete.",
                    f"Um {noun} {i} zu löschen, öffnen Sie das Menü."]
        lang += ["en", "de"]
        query += [f"where is the {noun} stored", f"wo ist {noun} {i} gespeichert"]
        passage += [f"Every {noun} is stored in your home directory.",
                    f"{noun} {i} liegt im Home-Verzeichnis."]
        lang += ["en", "de"]
    return {"query": query, "passage": passage, "lang": lang}


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_sentence_transformers(tiny_encoder(),
                                        tmp_path_factory.mktemp("model") / "export")


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = run_python(cmd, ROOT, user_env(), 600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def mine_cfg(**values: object) -> DictConfig:
    return compose_config("mine", [f"{k}={v}" for k, v in values.items()])


@pytest.fixture(scope="module")
def mined(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mine.py` as the user types it, on a parquet of English and German pairs."""
    tmp = tmp_path_factory.mktemp("mine")
    pq.write_table(pa.table(user_pairs()), tmp / "my_pairs.parquet")
    out = tmp / "mined.parquet"
    run([sys.executable, "src/f2llm/mine.py", f"model_path={export}",
         f"input={tmp / 'my_pairs.parquet'}", "language_column=lang", f"out={out}",
         "num_negatives=7", f"paths.log_dir={tmp / 'logs'}"])
    return out


def test_mined_parquet_passes_our_readers(export: Path, mined: Path) -> None:
    pairs, out = user_pairs(), mined
    table = read_dataset(DatasetSpec(path=out, format="retrieval", language_column="language"),
                         num_negatives=7)
    negative_columns = [f"negative_{j}" for j in range(1, 8)]
    assert table.column_names[:9] == ["query", "passage", *negative_columns]
    assert table.num_rows == 48  # every query found 7 candidates
    passages_by_lang = {lang: {p for p, la in zip(pairs["passage"], pairs["lang"], strict=True)
                               if la == lang} for lang in ("en", "de")}
    rows = table.to_pylist()
    for row in rows:
        negatives = [row[c] for c in negative_columns]
        assert row["passage"] not in negatives
        assert len(set(negatives)) == 7
        # Mined within the query's language.
        assert set(negatives) <= passages_by_lang[row["language"]]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["rows"] == 48 and record["dropped_by_language"] == {"de": 0, "en": 0}

    # "top": the negatives are the most similar candidates after the positive, best first.
    model = SentenceTransformer(str(export), device="cpu")
    row = rows[0]
    candidates = sorted(passages_by_lang[row["language"]] - {row["passage"]})
    q = model.encode([row["query"]], convert_to_tensor=True)
    scores = (model.encode(candidates, convert_to_tensor=True) @ q.T).squeeze(1)
    top = [candidates[i] for i in scores.argsort(descending=True)[:7].tolist()]
    assert [row[c] for c in negative_columns] == top


def test_mining_options_and_inputs(export: Path, tmp_path: Path) -> None:
    pairs = user_pairs()
    rows = [{"query": q, "positive": p} for q, p, la in
            zip(pairs["query"], pairs["passage"], pairs["lang"], strict=True) if la == "en"]
    write_jsonl(tmp_path / "pairs.jsonl", rows)  # JSONL with the sentence-transformers name
    (tmp_path / "corpus.txt").write_text("Unrelated text about cooking pasta.\n"
                                         "Weather report for tomorrow.\n")
    model = SentenceTransformer(str(export), device="cpu")
    base = {"model_path": export, "input": tmp_path / "pairs.jsonl", "language": "en",
            "num_negatives": 2}
    out = mine(mine_cfg(**base, out=tmp_path / "a.parquet", corpus=tmp_path / "corpus.txt",
                        range_min=3))
    mined = pq.read_table(out).to_pylist()
    corpus = {r["positive"] for r in rows} | set((tmp_path / "corpus.txt").read_text()
                                                 .splitlines())
    for row in mined:
        q = model.encode([row["query"]], convert_to_tensor=True)
        others = sorted(corpus - {row["passage"]})
        scores = (model.encode(others, convert_to_tensor=True) @ q.T).squeeze(1)
        skipped = {others[i] for i in scores.argsort(descending=True)[:3].tolist()}
        assert not skipped & {row["negative_1"], row["negative_2"]}  # range_min=3
    # max_score below every candidate's score leaves nothing to mine: a clear error.
    with pytest.raises(ValueError, match="no query got 2 negatives"):
        mine(mine_cfg(**base, out=tmp_path / "b.parquet", max_score=-1.0))
    with pytest.raises(ValueError, match="language"):
        mine(mine_cfg(model_path=export, input=tmp_path / "pairs.jsonl",
                      out=tmp_path / "c.parquet"))
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        mine(mine_cfg(**{**base, "model_path": "no-such/model"}, out=tmp_path / "d.parquet"))


def test_training_on_mined_negatives(mined: Path, tmp_path: Path) -> None:
    """The README's path: mine, list the file in a manifest, train with its 7 negatives."""
    (tmp_path / "mined.yaml").write_text(
        f"datasets:\n  - {{path: {mined}, format: retrieval, language_column: language}}\n")
    shape = [f"{k}={v}" for k, v in TINY_SHAPE.items()]
    run([sys.executable, "src/f2llm/train.py", "data=manifest",
         f"data.corpus.manifest={tmp_path / 'mined.yaml'}", "data.stages=null",
         "data.num_negatives.retrieval=7", "final_validate=false", "data.batch_size=8",
         "data.num_workers=0", "trainer.max_steps=4", "trainer.val_check_interval=100",
         "trainer.log_every_n_steps=1", "callbacks.progress=null",
         "trainer.enable_progress_bar=false",
         f"paths.log_dir={tmp_path / 'logs'}", f"paths.data_dir={tmp_path / 'data'}", *shape])
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    hard = [e.value for e in events.Scalars("train/loss_hard")]
    assert len(hard) == 4 and all(torch.isfinite(torch.tensor(v)) and v > 0 for v in hard)
    mix = json.loads((run_dir / "data_mix.json").read_text())
    assert set(mix["by_dataset"]) == {"mined"}
    assert set(mix["by_language"]) == {"en", "de"}
