"""A config as an entry point composes it, for code that runs without `@hydra.main`: the scripts
in scripts/, the tests, a notebook."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, open_dict

# The checkout this package is in (`f2llm.bootstrap.ROOT` for code imported from it): its
# configs/ are the ones composed, its data/ and logs/ the default paths.
ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """`configs/<name>.yaml` with `overrides`, as `python src/f2llm/<name>.py <overrides>`
    composes it, minus the `hydra` node (no Hydra run here, so `paths.output_dir`, which
    defaults to Hydra's run folder, must be given before it is read)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(name, overrides=[f"paths.root_dir={ROOT}", *overrides])
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def compose_train(overrides: Sequence[str] = (), output_dir: str | Path | None = None, *,
                  experiment: str | None = None) -> DictConfig:
    """`configs/train.yaml` with `overrides` (after `experiment=<experiment>` when given); code
    that trains passes `output_dir` (a folder of its own, e.g. a temporary one), so nothing
    lands in the checkout's logs/."""
    out = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    chosen = [f"experiment={experiment}"] if experiment else []
    return compose_config("train", [*chosen, *out, *overrides])
