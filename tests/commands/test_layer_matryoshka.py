"""Layer-wise Matryoshka and the false-negative options in a run as a user types it: the layer
losses and the dropped candidates are logged (the maths: tests/unit/test_layer_matryoshka.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from f2llm.export import export_sentence_transformers
from tests.conftest import (
    copy_repository,
    run_python,
    small_run,
    tiny_encoder,
    user_env,
)


def test_training_run_logs_layer_losses_and_dropped_candidates(tmp_path: Path,
                                                                locale_dir: Path) -> None:
    """As a user types it: the options on the command line of `src/f2llm/train.py`."""
    repo = copy_repository(tmp_path / "repo")
    # GISTEmbed's guide
    guide = export_sentence_transformers(tiny_encoder(layers=1), tmp_path / "guide")
    args = small_run(locale_dir, steps=3, **{
        "model.shape.num_hidden_layers": 3, "objective.layers": "[1,2]",
        "objective.mask_same_text": "true", "objective.false_negative_margin": 0.1,
        "guide": "default", "guide.path": guide, "objective.guide_margin": 0.05,
        "trainer.log_every_n_steps": 1, "trainer.val_check_interval": 3})
    done = run_python([sys.executable, "src/f2llm/train.py", *args], repo, user_env(), 900)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (repo / "logs" / "train" / "runs").iterdir()
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/loss@layer1", "train/loss@layer2", "train/loss_layer1",
                "train/retrieval/dropped/same_text", "train/retrieval/dropped/margin",
                "train/retrieval/dropped/guide"):
        assert tag in tags, sorted(tags)
    # The guide's embeddings are cached on disk by token ids, as a teacher's.
    assert list((repo / "data" / "guide_cache").glob("*/emb-*.npy"))
    layer1 = [e.value for e in events.Scalars("train/loss@layer1")]
    assert len(layer1) == 3 and all(v > 0 for v in layer1)
    dropped = [e.value for e in events.Scalars("train/retrieval/dropped/same_text")]
    assert all(v >= 0 and float(v).is_integer() for v in dropped)
    assert os.path.exists(run / "final_metrics.json")
