"""End to end through `train()`: the composed default trains, evaluates, logs and exports (a
multirun sweep, as a user types it: the README's `-m optimizer.lr=...` line,
tests/commands/test_readme.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from f2llm.train import train
from tests.conftest import tiny_overrides


def scalar_tags(run: Path) -> set[str]:
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return set(events.Tags()["scalars"])


def test_default_config_trains_evaluates_and_exports(cfg_tiny: DictConfig) -> None:
    metrics = train(cfg_tiny)
    run = Path(cfg_tiny.paths.output_dir)
    dims = [32, 16, 8]
    for dim in dims:
        assert 0.0 <= metrics[f"val/bitext/accuracy@{dim}"] <= 1.0
    saved = json.loads((run / "final_metrics.json").read_text())
    assert saved["val/bitext/accuracy@32"] == pytest.approx(metrics["val/bitext/accuracy@32"])
    assert (run / "export" / "modules.json").exists()
    assert (run / "export" / "model.safetensors").exists()
    assert (run / "checkpoints" / "last.ckpt").exists()
    lines = (run / "matryoshka_eval.jsonl").read_text().splitlines()
    assert len(lines) >= 2 and "bitext_per_language" in json.loads(lines[-1])
    tags = scalar_tags(run)
    expected = {"train/loss", "train/loss_inbatch", "train/retrieval/loss", "perf/samples_per_s",
                "perf/tokens_per_s", "perf/padding_fraction", "train/stage",
                # The default's two lr groups (module.embedding_lr_scale=4): the table at 4x.
                "lr-AdamW/model", "lr-AdamW/embedding"}
    expected |= {f"train/loss@{d}" for d in dims}
    for task_metric in ("bitext/accuracy", "retrieval/ndcg_at_10", "retrieval/mrr_at_10",
                        "retrieval/recall_at_5", "clustering/v_measure",
                        "classification/accuracy"):
        expected |= {f"val/{task_metric}@{d}" for d in dims}
    assert expected <= tags, expected - tags
    # The Matryoshka figure: an image in TensorBoard and a PNG in the run folder.
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert "val/matryoshka" in events.Tags()["images"]
    assert (run / "matryoshka.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_turning_the_progress_bar_off_needs_one_override(tmp_path: Path, locale_dir: Path) -> None:
    from lightning.pytorch.callbacks import ProgressBar

    from f2llm.train import build
    from tests.conftest import compose_train

    overrides = [o for o in tiny_overrides(tmp_path, locale_dir)
                 if not o.startswith(("callbacks.progress=", "trainer.enable_progress_bar="))]
    cfg = compose_train([*overrides, "trainer.enable_progress_bar=false"])
    assert cfg.callbacks.progress  # the configured bar is still there ...
    _, _, trainer = build(cfg)  # ... and Lightning does not refuse it
    assert trainer.progress_bar_callback is None
    assert not any(isinstance(c, ProgressBar) for c in trainer.callbacks)
