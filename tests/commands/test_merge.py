"""`merge.py` on a real short run's checkpoints, as a user types it: reproducible bitwise, and the
export embeds like the merged weights (the soup and slerp maths: tests/unit/test_merge.py)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from sentence_transformers import SentenceTransformer

from f2llm.merge import encoder_weights, last_checkpoints, merge, slerp_merge, soup
from tests.conftest import (
    ROOT,
    compose_config,
    copy_repository,
    run_python,
    tiny_overrides,
    user_env,
)

TEXTS = ["Fichier introuvable", "Cannot open file %s", "Файл не найден", "保存"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory, locale_dir: Path) -> Path:
    """A real 6-step training run keeping the checkpoints of steps 2, 4 and 6, trained as the
    user runs it (outputs under tmp via paths.log_dir / paths.data_dir)."""
    tmp = tmp_path_factory.mktemp("merge")
    overrides = [o for o in tiny_overrides(tmp, locale_dir, **{
        "trainer.max_steps": 6, "trainer.val_check_interval": 100, "final_validate": False,
        "callbacks.checkpoint.save_top_k": -1, "paths.log_dir": str(tmp / "logs")})
        if not o.startswith("paths.output_dir")]
    done = run_python([sys.executable, "src/f2llm/train.py", *overrides], ROOT, user_env(), 600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (tmp / "logs" / "train" / "runs").iterdir()
    return run


def merge_cfg(run: Path, out: Path, **extra: object) -> DictConfig:
    return compose_config("merge", [f"run={run}", f"out={out}",
                                    *(f"{k}={v}" for k, v in extra.items())])


def test_merge_command_on_a_real_run(short_run: Path, tmp_path: Path) -> None:
    steps = [s for s, _ in last_checkpoints(short_run, 3)]
    assert steps == [2, 4, 6]  # last.ckpt is step 6 again: one file per step
    # As a user types it, from another folder: the merge lands in the checkout's logs/merge
    # (the project root is the script's checkout, as for train.py), not in the current folder.
    repo, elsewhere = copy_repository(tmp_path / "repo"), tmp_path / "elsewhere"
    elsewhere.mkdir()
    cmd = [sys.executable, str(repo / "src/f2llm/merge.py"), f"run={short_run}", "last=3",
           "method=soup"]
    done = run_python(cmd, elsewhere, user_env(), 600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(elsewhere.iterdir())
    (merged,) = (repo / "logs" / "merge" / "runs").iterdir()
    shutil.move(merged, tmp_path / "a")
    record = json.loads((tmp_path / "a" / "merge.json").read_text())
    assert [c["step"] for c in record["checkpoints"]] == [2, 4, 6]
    # Reproducible: the same inputs give bitwise the same weights.
    merge(merge_cfg(short_run, tmp_path / "b", last=3, method="soup"))
    weights = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert weights == (tmp_path / "b" / "model.safetensors").read_bytes()
    # The run's prompts come along.
    assert ((tmp_path / "a" / "config_sentence_transformers.json").read_text()
            == (short_run / "export" / "config_sentence_transformers.json").read_text())

    # The export embeds like the merged weights loaded into the run's encoder.
    states = [encoder_weights(p) for _, p in last_checkpoints(short_run, 3)]
    cfg = OmegaConf.load(short_run / ".hydra" / "config.yaml")
    from hydra.utils import instantiate

    for method, merged in (("soup", soup(states)), ("slerp", slerp_merge(states))):
        out = tmp_path / "a" if method == "soup" else tmp_path / method
        if method == "slerp":
            merge(merge_cfg(short_run, out, last=3, method="slerp"))
            assert "slerp_linear_tensors" in json.loads((out / "merge.json").read_text())
        encoder = instantiate(cfg.model)
        encoder.load_state_dict(merged)
        st = SentenceTransformer(str(out), device="cpu")
        torch.testing.assert_close(st.encode(TEXTS, convert_to_tensor=True),
                                   encoder.encode(TEXTS), atol=1e-5, rtol=0)
    # The merge differs from each checkpoint it merged.
    last = encoder_weights(short_run / "checkpoints" / "last.ckpt")
    assert any(not torch.equal(soup(states)[k], last[k]) for k in last)

    with pytest.raises(FileNotFoundError, match="save_top_k=-1"):
        merge(merge_cfg(short_run, tmp_path / "c", last=4))
