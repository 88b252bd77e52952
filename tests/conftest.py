"""Shared fixtures: offline hub, a small slice of the gettext catalogs, a tiny composed config."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from f2llm.model import Encoder, build_encoder

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
LOCALES = Path("/usr/share/locale")
TEST_LANGUAGES = ["fr", "de", "ru", "es", "ja", "uk"]
TEST_TRAIN_CATALOGS = ["coreutils", "tar", "sed", "grep", "wget", "gzip", "diffutils", "bash",
                       "apt", "iso_3166-1", "iso_639-2"]
TEST_VAL_CATALOGS = ["gdk-pixbuf", "xdg-user-dirs", "at-spi2-core"]

TINY_SHAPE = {
    "model.shape.hidden_size": 32,
    "model.shape.num_hidden_layers": 1,
    "model.shape.num_attention_heads": 2,
    "model.shape.num_key_value_heads": 1,
    "model.shape.head_dim": 16,
    "model.shape.intermediate_size": 64,
}


@pytest.fixture(scope="session")
def locale_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A locale tree with a few languages and catalogs (symlinks to the machine's .mo files)."""
    if not LOCALES.exists():
        pytest.skip("no gettext catalogs on this machine")
    root = tmp_path_factory.mktemp("locale")
    for lang in TEST_LANGUAGES:
        for catalog in TEST_TRAIN_CATALOGS + TEST_VAL_CATALOGS:
            src = LOCALES / lang / "LC_MESSAGES" / f"{catalog}.mo"
            if src.exists():
                dst = root / lang / "LC_MESSAGES" / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(src)
    return root


def tiny_overrides(tmp: Path, locale: Path, **extra: object) -> list[str]:
    values: dict[str, object] = {
        "paths.root_dir": str(ROOT),
        "paths.data_dir": str(tmp / "data"),
        "paths.output_dir": str(tmp / "run"),
        "data.corpus.locale_dir": str(locale),
        "data.corpus.val_catalogs": "[" + ",".join(TEST_VAL_CATALOGS) + "]",
        "data.corpus.val_min_pairs": 16,
        "data.corpus.val_max_pairs": 32,
        "data.batch_size": 8,
        "trainer.max_steps": 4,
        "trainer.val_check_interval": 2,
        "trainer.log_every_n_steps": 1,
        "trainer.enable_progress_bar": False,
        "callbacks.throughput.window": 2,
        "callbacks.checkpoint.every_n_train_steps": 2,
        "callbacks.progress": None,
        **TINY_SHAPE,
        **extra,
    }
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


def compose_train(overrides: list[str], experiment: str | None = None) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        extra = [f"experiment={experiment}"] if experiment else []
        cfg = compose(config_name="train", overrides=extra + overrides)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


@pytest.fixture()
def cfg_tiny(tmp_path: Path, locale_dir: Path) -> DictConfig:
    """The default config, shrunk to a CPU, tiny-model, few-step run."""
    return compose_train(tiny_overrides(tmp_path, locale_dir))


# ---- helpers shared by the test modules (one definition each; test modules import them from
# here, never from each other) ------------------------------------------------------------------

# Published parameter counts of the F2LLM-v2 model configs (SPEC.md).
PUBLISHED = {
    "f2llm_80m": 80_084_288,
    "f2llm_160m": 159_185_024,
    "f2llm_330m": 334_349_184,
    "f2llm_0_6b": 596_049_920,
    "f2llm_1_7b": 1_720_574_976,
    "f2llm_4b": 4_022_468_096,
    "f2llm_8b": 7_568_405_504,
    "f2llm_14b": 13_990_394_880,
}
WORDS = ["file", "open", "cannot", "save", "print", "network", "error", "user", "disk", "copy",
         "window", "font", "colour", "archive", "mount", "password", "device", "folder"]


def model_config(name: str) -> DictConfig:
    """`configs/model/<name>.yaml` as Hydra composes it (the model files build on each other)."""
    return compose_train([f"model={name}", f"paths.root_dir={ROOT}"]).model


def tiny_encoder(**kw: Any) -> Encoder:
    """The tests' tiny Qwen3 encoder: TINY_SHAPE with two layers, the bundled Qwen3 tokenizer,
    max_length 32, random init from seed 0 (so every call gives the same weights)."""
    shape = {k.removeprefix("model.shape."): v for k, v in TINY_SHAPE.items()}
    shape.update(vocab_size=151_936, num_hidden_layers=2)
    torch.manual_seed(0)
    return build_encoder("tiny", shape=shape, **{"max_length": 32, **kw})


def texts(n: int, seed: int) -> list[str]:
    """`n` distinct short phrases of WORDS."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        out[" ".join(rng.choice(WORDS, size=int(rng.integers(2, 7))))] = None
    return list(out)


def toy_retrieval() -> tuple[list[str], list[str], dict[int, set[int]]]:
    """(queries, corpus, relevant corpus rows per query) of a small retrieval task."""
    corpus = texts(60, seed=0)
    rng = np.random.default_rng(1)
    queries, relevant = [], {}
    for q in range(20):
        size = int(rng.integers(1, 4))
        docs = {int(d) for d in rng.choice(len(corpus), size=size, replace=False)}
        # A query is a variant of its first relevant document, so some hits rank high and some
        # relevant documents rank far below the top 10.
        words = corpus[min(docs)].split()
        queries.append(" ".join([*words[1:], WORDS[q % len(WORDS)]]))
        relevant[q] = docs
    relevant[20] = set()  # no relevant document: left out on both sides
    queries.append("printer")
    return queries, corpus, relevant


def records(n: int, k: int, prefix: str = "") -> dict[str, list[str]]:
    """`n` retrieval records with `k` negatives, as columns."""
    cols = {"query": [f"{prefix}q{i}" for i in range(n)],
            "passage": [f"{prefix}p{i}" for i in range(n)]}
    cols.update({f"negative_{j}": [f"{prefix}n{i}.{j}" for i in range(n)] for j in range(1, k + 1)})
    return cols


def write_jsonl(path: Path, rows: list[dict | str | bytes]) -> Path:
    with path.open("wb") as fh:
        for row in rows:
            if isinstance(row, dict):
                row = json.dumps(row, ensure_ascii=False)
            fh.write((row.encode() if isinstance(row, str) else row) + b"\n")
    return path


def good(k: int = 7, **fields: object) -> dict:
    """A valid record with `k` negatives; `fields` replace values (`...` drops the field)."""
    row = {"query": "q", "passage": "p", **{f"negative_{j}": f"n{j}" for j in range(1, k + 1)}}
    row.update(fields)
    return {key: value for key, value in row.items() if value is not ...}
