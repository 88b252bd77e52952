"""The held-out task registry: a new task is one file; a corpus runs the tasks it has sets for,
in training (`MatryoshkaEval`) and in `eval.py` alike."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from torch import Tensor
from torch.nn import functional as F

from f2llm.data.corpus import Corpus, TrainingDataset
from f2llm.data.sources.manifest import build_manifest_corpus
from f2llm.evaluation.heldout import HeldoutEvaluator, main_metrics
from f2llm.evaluation.tasks import TASKS, HeldoutTask, Table, register
from f2llm.train import train
from tests.conftest import compose_train, tiny_overrides

# ---- a toy held-out task: all that adding a task takes (in src/f2llm/evaluation/tasks/<name>.py)


@register
class PairMatching(HeldoutTask):
    """Each left text's partner is the nearest right text (cosine), at every dim."""

    name = "pairs"  # and reads Corpus.val["pairs"] (no val_set: the name): columns left, right
    sets = ("pairs/left", "pairs/right")
    instructed = {"pairs/left": "retrieval"}  # noqa: RUF012  queries: the retrieval instruction
    main_metric = "accuracy"

    def texts(self, table: Table, corpus: Corpus) -> dict[str, list[str]]:
        return {"pairs/left": table["left"], "pairs/right": table["right"]}

    def score(self, embeddings: Mapping[str, Tensor], table: Table, dims: Sequence[int]
              ) -> tuple[dict[str, float], Any]:
        left, right = embeddings["pairs/left"], embeddings["pairs/right"]
        scores = {}
        for d in dims:
            sim = F.normalize(left[:, :d], dim=-1) @ F.normalize(right[:, :d], dim=-1).T
            scores[f"accuracy@{d}"] = (sim.argmax(1) == torch.arange(len(left))).float().mean()
        return {k: float(v) for k, v in scores.items()}, None


# ---- shared -------------------------------------------------------------------------------------


class HashedEmbedder:
    """A fixed, model-free embedder: character trigrams (of the query's instruction and the
    text) hashed into 32 dims."""

    width = 32

    def embed(self, texts: Sequence[str], query: TrainingDataset | None) -> Tensor:
        instruction = query.instruction if query is not None else None
        out = torch.zeros(len(texts), self.width)
        for i, text in enumerate(texts):
            text = f"{instruction or ''}|{text}"
            for j in range(len(text) - 2):
                out[i, zlib.crc32(text[j : j + 3].encode()) % self.width] += 1.0
        return out


def user_data(root: Path) -> tuple[Path, dict[str, Path]]:
    """A manifest with one retrieval dataset (instruction set), and held-out bitext and pairs."""
    root.mkdir(parents=True, exist_ok=True)
    n = 48
    words = ["open", "file", "read", "write", "error", "disk", "copy", "move", "link", "mode"]

    def text(i: int, salt: int) -> str:
        return " ".join(words[(i * 7 + salt * j) % len(words)] for j in range(1 + i % 4)) + f" {i}"

    table = {"query": [text(i, 1) for i in range(n)], "passage": [text(i, 3) for i in range(n)],
             **{f"negative_{k}": [text(i + k, 3) for i in range(n)] for k in range(1, 8)},
             "lang": ["en", "de"] * (n // 2)}
    pq.write_table(pa.table(table), root / "retrieval.parquet")
    (root / "manifest.yaml").write_text(
        "datasets:\n  - {path: retrieval.parquet, format: retrieval, language_column: lang,\n"
        "     instruction: Find the matching passage}\n")
    val = {"bitext": root / "val_bitext.parquet", "pairs": root / "val_pairs.parquet"}
    pq.write_table(pa.table({"source": [text(i, 5) for i in range(32)],
                             "target": [text(i, 2) for i in range(32)],
                             "language": ["de", "fr"] * 16}), val["bitext"])
    pq.write_table(pa.table({"left": [text(i, 1) for i in range(24)],
                             "right": [text(i, 3) for i in range(24)]}), val["pairs"])
    return root / "manifest.yaml", val


# ---- the tests --------------------------------------------------------------------------------


def test_the_four_tasks_and_the_toy_are_registered() -> None:
    assert main_metrics() == {"bitext": "accuracy", "retrieval": "ndcg_at_10",
                              "clustering": "v_measure", "classification": "accuracy",
                              "pairs": "accuracy"}
    assert TASKS["retrieval"].sets == TASKS["bitext"].sets  # retrieval reuses bitext's embeddings
    # A task reads the held-out set named after it unless it names one; a subclass inherits it.
    assert {name: task.val_set for name, task in TASKS.items()} == {
        "bitext": "bitext", "retrieval": "bitext", "clustering": "clustering",
        "classification": "classification", "pairs": "pairs"}


def test_a_manifest_corpus_with_only_bitext_held_out_evaluates(tmp_path: Path) -> None:
    # eval.py used to index val["clustering"] and class_labels: a KeyError here.
    manifest, val = user_data(tmp_path / "user")
    corpus = build_manifest_corpus(manifest, tmp_path / "out", val={"bitext": str(val["bitext"])})
    assert corpus.class_labels == [] and set(corpus.val) == {"bitext"}
    metrics = HeldoutEvaluator(corpus)(HashedEmbedder(), dims=[32, 8]).metrics
    assert {k.split("/")[0] for k in metrics} == {"bitext", "retrieval"}
    assert {"bitext/accuracy@8", "bitext/accuracy@32", "retrieval/ndcg_at_10@8"} <= set(metrics)
    assert metrics["bitext/accuracy"] == metrics["bitext/accuracy@32"]


def test_held_out_classification_without_label_texts_says_so(tmp_path: Path) -> None:
    path = tmp_path / "val_classification.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": [0, 1], "language": ["en", "en"]}),
                   path)
    corpus = Corpus(train=[], val={"classification": path})
    with pytest.raises(ValueError, match="needs the corpus's label texts"):
        HeldoutEvaluator(corpus)


def test_a_registered_task_runs_in_training_and_in_eval(tmp_path: Path, locale_dir: Path
                                                        ) -> None:
    manifest, val = user_data(tmp_path / "user")
    overrides = [o for o in tiny_overrides(tmp_path, locale_dir, **{
        "data.batch_size": 8, "data.num_workers": 0, "trainer.max_steps": 4,
        "trainer.val_check_interval": 4}) if not o.startswith(("data.corpus.", "data.stages"))]
    overrides += ["data=manifest", f"data.corpus.manifest={manifest}"]
    cfg = compose_train(overrides)
    with open_dict(cfg):
        cfg.data.corpus.val = {k: str(v) for k, v in val.items()}
        cfg.data.stages = [{"name": "s", "datasets": ["retrieval"], "instructions": True,
                            "steps": 4}]

    # The evaluator embeds the task's sets; its left side gets the retrieval instruction.
    corpus = instantiate(cfg.data.corpus)()
    evaluator = HeldoutEvaluator(corpus)
    assert {"pairs/left", "pairs/right", "bitext/source", "bitext/target"} == set(evaluator.sets)
    assert {name: query.instruction for name, query in evaluator.queries.items()} == {
        "pairs/left": "Find the matching passage"}

    metrics = train(cfg)
    dims = [32, 16, 8]
    for d in dims:
        assert 0.0 <= metrics[f"val/pairs/accuracy@{d}"] <= 1.0
    assert metrics["val/pairs/accuracy"] == metrics["val/pairs/accuracy@32"]
    run = Path(cfg.paths.output_dir)
    logged = json.loads((run / "matryoshka_eval.jsonl").read_text().splitlines()[-1])
    assert logged["metrics"]["pairs/accuracy@8"] == pytest.approx(metrics["val/pairs/accuracy@8"])

    # eval.py on the export iterates the same registry: the same scores.
    from f2llm.eval import load_embedder

    again = evaluator(load_embedder(run / "export"), dims).metrics
    for d in dims:
        assert again[f"pairs/accuracy@{d}"] == pytest.approx(metrics[f"val/pairs/accuracy@{d}"],
                                                             abs=1e-4)
