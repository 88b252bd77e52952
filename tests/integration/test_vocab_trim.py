"""`callbacks.vocab_trim.enabled=true` through `train()`: the same model as without (the trimmed
layout and its maths: tests/unit/test_vocab_trim.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict
from safetensors.torch import load_file

from f2llm.train import train


def test_train_with_vocab_trim_gives_the_untrimmed_model(cfg_tiny: DictConfig,
                                                         tmp_path: Path) -> None:
    """`callbacks.vocab_trim.enabled=true` through `train()`: the same export as without."""
    weights = {}
    for enabled in (False, True):
        cfg = cfg_tiny.copy()
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / f"run_{enabled}")
            cfg.callbacks.export.path = str(tmp_path / f"run_{enabled}" / "export")
            cfg.callbacks.checkpoint.dirpath = str(tmp_path / f"run_{enabled}" / "ckpt")
            cfg.callbacks.vocab_trim.enabled = enabled
        train(cfg)
        weights[enabled] = load_file(tmp_path / f"run_{enabled}" / "export" / "model.safetensors")
    assert weights[True].keys() == weights[False].keys()
    for key, value in weights[False].items():
        torch.testing.assert_close(weights[True][key], value, rtol=1e-5, atol=1e-6, msg=key)
    cached = list((Path(cfg_tiny.paths.data_dir) / "vocab_trim").glob("token_ids-*.pt"))
    assert len(cached) == 1
    ids = torch.load(cached[0])
    assert 0 < ids.numel() < 151_936
