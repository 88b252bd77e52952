"""The CPU prune -> distill recipe end to end: prune a trained export at the start of fit,
then train with KD from the unpruned model through the teacher cache; and the published
recipes' fast failure without a network."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModel

from f2llm.export import export_sentence_transformers
from f2llm.train import train
from tests.conftest import compose_train, run_python, tiny_encoder, tiny_overrides, user_env


def test_prune_distill_tiny_end_to_end(tmp_path: Path, locale_dir: Path) -> None:
    teacher = export_sentence_transformers(tiny_encoder(), tmp_path / "teacher")  # 32 wide
    extra = {
        "model.pretrained": str(teacher), "model.max_length": 32,
        "callbacks.pruning.target.shape.hidden_size": 16,
        "callbacks.pruning.target.shape.intermediate_size": 32,
        "callbacks.pruning.target.shape.head_dim": 16,
        "callbacks.pruning.target.shape.num_hidden_layers": 2,
        "callbacks.pruning.calibration_texts": 64,
        "data.stages.0.steps": 4, "trainer.val_check_interval": 2,
    }
    cfg = compose_train(tiny_overrides(tmp_path, locale_dir, **extra),
                        experiment="prune_distill_tiny")
    with open_dict(cfg):
        cfg.final_validate = False
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    pruned = run / "pruned"
    summary = json.loads((pruned / "pruning.json").read_text())
    assert summary["method"] == "activation"
    assert summary["after"]["hidden_size"] == 16 and summary["after"]["intermediate_size"] == 32
    reloaded = AutoModel.from_pretrained(pruned)
    assert sum(p.numel() for p in reloaded.parameters()) == summary["parameters"]
    assert summary["parameters"] < summary["parameters_before"]
    # KD ran through the cache, and the student exports at its pruned width.
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train/loss_kd", "teacher/cache_hit_rate"} <= set(events.Tags()["scalars"])
    assert any((tmp_path / "data" / "teacher_cache").glob("*/keys-*.npy"))
    pooling = json.loads((run / "export" / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 16
    assert 0.0 <= metrics["val/bitext/accuracy@16"] <= 1.0

    # Resuming the pruned run: pruned again at setup, then the checkpoint's weights load.
    resumed = compose_train(tiny_overrides(tmp_path / "again", locale_dir, **{
        **extra, "ckpt_path": str(run), "trainer.max_steps": 6, "data.stages.0.steps": 6}),
        experiment="prune_distill_tiny")
    with open_dict(resumed):
        resumed.final_validate = False
        resumed.paths.data_dir = cfg.paths.data_dir
    train(resumed)
    assert json.loads((tmp_path / "again" / "run" / "data_mix.json").read_text())["batches"] == 6


@pytest.mark.parametrize("size", ["80m", "160m", "330m"])
def test_published_recipe_without_network_stops_in_seconds(size: str, repo_copy: Path) -> None:
    # In a repository copy: the run folder Hydra makes before the failure lands there.
    done = run_python([sys.executable, "src/f2llm/train.py", f"experiment=prune_distill_{size}"],
                      repo_copy, user_env(), 120)
    assert done.returncode != 0
    assert "teacher.path=codefuse-ai/F2LLM-v2-0.6B" in done.stderr
    assert "set teacher.path=<folder>" in done.stderr
    # Fast means before any work: no corpus, model or trainer was built (none logged a line).
    # (No wall-time bound: under a loaded CI machine one is a coin toss.)
    assert "[INFO]" not in done.stderr + done.stdout
