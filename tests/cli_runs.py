"""Running the entry points as a user types them: `python src/f2llm/<script>.py ...` from a
temporary copy of the repository (its runs land in the copy's `logs/`, never in ours), with no
`hydra.*` or `paths.*` overrides; only steps, validation interval and the small test corpus."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, TEST_VAL_CATALOGS, TINY_SHAPE

_COPIED = ("configs", "src", "pyproject.toml", "README.md")


def repo_copy(dst: Path) -> Path:
    """The files a user's clone runs from (no logs/, data/ or .git)."""
    dst.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in _COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=ignore)
        else:
            shutil.copy2(src, dst / name)
    return dst


def small_run(locale: Path, steps: int = 4, **extra: object) -> list[str]:
    """Step-count, validation-interval and test-corpus overrides (and `extra`)."""
    values: dict[str, object] = {
        "data.corpus.locale_dir": locale,
        "data.corpus.val_catalogs": "[" + ",".join(TEST_VAL_CATALOGS) + "]",
        "data.corpus.val_min_pairs": 16, "data.corpus.val_max_pairs": 32,
        "data.batch_size": 8, "trainer.max_steps": steps, "trainer.val_check_interval": 2,
        "trainer.enable_progress_bar": "false", **TINY_SHAPE, **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def user_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"PROJECT_ROOT", "HYDRA_FULL_ERROR"}}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra}


def run_cli(repo: Path, script: str, *args: str, timeout: int = 600, **env: str
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, f"src/f2llm/{script}.py", *args], cwd=repo,
                          env=user_env(**env), capture_output=True, text=True, timeout=timeout)


def run_folders(repo: Path) -> list[Path]:
    """The copy's run folders, oldest first."""
    return sorted((repo / "logs" / "train" / "runs").glob("*"))


_TRAINED: dict[str, Path] = {}


def trained_repo(tmp_path_factory, locale: Path) -> Path:
    """A repository copy holding one short run of the default, made once per test session:
    4 steps in two stages (a checkpoint at the switch, step 2, and `last.ckpt`), validated at
    step 3 and once more after fit (final_validate), so the last metrics come after fit."""
    if "repo" not in _TRAINED:
        repo = repo_copy(tmp_path_factory.mktemp("clone"))
        done = run_cli(repo, "train", *small_run(locale, **{
            "data.stages.0.steps": 2, "trainer.val_check_interval": 3}))
        assert done.returncode == 0, done.stderr[-3000:]
        _TRAINED["repo"] = repo
    return _TRAINED["repo"]
