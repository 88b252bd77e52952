"""The suite fails when a test leaves files in the repository's git-ignored logs/ or data/."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import copy_repository

DIRTY = '''
from tests.conftest import ROOT

def test_writes_a_run_folder():
    (ROOT / "logs" / "train" / "runs" / "x").mkdir(parents=True)
    (ROOT / "logs" / "train" / "runs" / "x" / "train.log").write_text("left behind")
'''
CLEAN = '''
def test_writes_under_tmp(tmp_path):
    (tmp_path / "train.log").write_text("fine")
'''


def run_pytest(repo: Path, name: str, body: str) -> subprocess.CompletedProcess[str]:
    (repo / "tests" / name).write_text(body)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"tests/{name}"], cwd=repo, capture_output=True, text=True,
                          timeout=300, env={**os.environ})


def test_suite_fails_on_files_left_in_logs(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path / "f2llm")
    # A corpus cache built before the test run is the user's, not a test's.
    cache = repo / "data" / "gettext" / "manifest.json"
    cache.parent.mkdir(parents=True)
    cache.write_text("{}")
    old = time.time() - 3600
    os.utime(cache, (old, old))

    clean = run_pytest(repo, "test_clean_case.py", CLEAN)
    assert clean.returncode == 0, clean.stdout[-2000:]
    assert "repository not left clean" not in clean.stdout

    dirty = run_pytest(repo, "test_dirty_case.py", DIRTY)
    assert dirty.returncode == 1, dirty.stdout[-2000:]
    assert "1 passed" in dirty.stdout  # the test itself passed; the test run fails
    assert "repository not left clean" in dirty.stdout
    assert "logs/train/runs/x/train.log" in dirty.stdout
    assert "data/gettext" not in dirty.stdout
