"""Shared fixtures: offline hub, a small slice of the gettext catalogs, a tiny composed config."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

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
