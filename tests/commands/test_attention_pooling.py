"""Bidirectional attention and mean pooling on, as a user types them: the run's export, checkpoint
and merge all embed the trained model the same (the maths: tests/unit/test_attention_pooling.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from f2llm.eval import load_embedder
from f2llm.model import attention_of, folder_pooling
from tests.conftest import TEST_VAL_CATALOGS, copy_repository, run_python, user_env


def test_training_with_the_options_on_as_a_user_types_it(
        tmp_path: Path, locale_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python src/f2llm/train.py model.attention=bidirectional model.pooling=mean` on the
    tests' slice, in a repository copy; then the run's export, its checkpoint (eval.py's two
    loaders) and `merge.py` of its checkpoints all embed the trained model the same."""
    repo = copy_repository(tmp_path / "f2llm")
    slice_ = [f"data.corpus.locale_dir={locale_dir}",
              "data.corpus.val_catalogs=[" + ",".join(TEST_VAL_CATALOGS) + "]",
              "data.corpus.val_min_pairs=16", "data.corpus.val_max_pairs=32",
              "data.batch_size=8", "trainer.max_steps=4", "trainer.val_check_interval=4",
              "callbacks.checkpoint.every_n_train_steps=2", "callbacks.checkpoint.save_top_k=-1",
              "model.shape.num_hidden_layers=1", "model.shape.hidden_size=32",
              "model.shape.intermediate_size=64", "model.shape.head_dim=16"]
    cmd = [sys.executable, "src/f2llm/train.py", "model.attention=bidirectional",
           "model.pooling=mean", *slice_]
    done = run_python(cmd, repo, user_env(), 900)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = [p.parent for p in (repo / "logs").rglob("final_metrics.json")]
    export = run / "export"
    assert attention_of(AutoModel.from_pretrained(export).config) == "bidirectional"
    assert folder_pooling(export) == "mean"
    card = (export / "README.md").read_text()
    assert "bidirectional attention" in card and "mean pooling" in card

    texts = ["Open file", "Ouvrir le fichier", "Datei öffnen"]
    # As eval.py run in the copy would: its paths (the corpus for instructions) are the copy's.
    monkeypatch.setenv("PROJECT_ROOT", str(repo))
    from_export = load_embedder(export)
    from_ckpt = load_embedder(run / "checkpoints" / "last.ckpt")
    torch.testing.assert_close(from_export.embed(texts, None), torch.nn.functional.normalize(
        from_ckpt.embed(texts, None), dim=-1), atol=1e-5, rtol=0)

    merged = tmp_path / "merged"
    cmd = [sys.executable, "src/f2llm/merge.py", f"run={run}", "last=2", f"out={merged}"]
    done = run_python(cmd, repo, user_env(), 600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert attention_of(AutoModel.from_pretrained(merged).config) == "bidirectional"
    assert folder_pooling(merged) == "mean"
