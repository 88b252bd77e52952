"""The console scripts of pyproject.toml, `f2llm-train`, `f2llm-eval`, `f2llm-merge`, `f2llm-mine`.

What is checked:
- `[project.scripts]` names one `f2llm-<name>` per Hydra entry point (`src/f2llm/<name>.py`
  with `@hydra.main`) and nothing else, each `f2llm.<name>:main`, a callable;
- each console script on PATH, run as typed from another folder (`f2llm-eval --cfg job -p paths
  --resolve`), composes its config from the installed checkout's configs/ and puts data/ and
  logs/ under that checkout (f2llm/bootstrap.py). `make test` installs the project editable, so
  there they are the scripts pip generated for this checkout; a script not on PATH is skipped,
  named. `--cfg` composes and prints without running the job, so nothing is written: a real run
  would write into the checkout's logs/, which the suite must leave clean.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import f2llm
from tests.conftest import ROOT, user_env

ENTRY_POINTS = sorted(p.stem for p in (ROOT / "src" / "f2llm").glob("*.py")
                      if "@hydra.main(" in p.read_text())
# The checkout a console script's `import f2llm` reaches: this test's.
INSTALLED = Path(f2llm.__file__).resolve().parents[2]


def console_scripts() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)["project"]["scripts"]


def test_every_entry_point_has_a_console_script() -> None:
    assert ENTRY_POINTS == ["eval", "merge", "mine", "train"]
    assert console_scripts() == {f"f2llm-{n}": f"f2llm.{n}:main" for n in ENTRY_POINTS}
    for target in console_scripts().values():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), target


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_console_script_as_typed(name: str, tmp_path: Path) -> None:
    script = shutil.which(f"f2llm-{name}")
    if script is None:
        pytest.skip(f"f2llm-{name} is not on PATH (pip install -e . makes it)")
    done = subprocess.run([f"f2llm-{name}", "--cfg", "job", "-p", "paths", "--resolve"],
                          cwd=tmp_path, env=user_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    paths = OmegaConf.create(done.stdout)  # the `# @package paths` line is a comment
    assert paths["root_dir"] == str(INSTALLED)
    assert paths["data_dir"] == str(INSTALLED / "data")
    assert paths["log_dir"] == str(INSTALLED / "logs")
    assert not any(tmp_path.iterdir())  # nothing in the working folder either


def test_entry_points_answer_the_command_line_before_the_heavy_imports() -> None:
    """`--help`, `--cfg job` and a mistake Hydra finds in the command line are answered before
    torch, transformers and Lightning are imported (they cost seconds): importing an entry
    point imports none of them (merge.py: torch only, its maths)."""
    probe = "\n".join([
        "import importlib, json, sys",
        "heavy = ('torch', 'transformers', 'lightning', 'sklearn', 'pyarrow')",
        "found = {}",
        "for name in ('train', 'eval', 'mine', 'merge'):",  # merge last: it imports torch
        "    importlib.import_module(f'f2llm.{name}')",
        "    found[name] = [m for m in heavy if m in sys.modules]",
        "print(json.dumps(found))"])
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=user_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "train": [], "eval": [], "mine": [], "merge": ["torch"]}
