"""The documentation site builds with `mkdocs build --strict`, as CONTRIBUTING.md types it: dead
links and anchors fail the build (the pages' contents: tests/unit/test_docs.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_site_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("material", reason="mkdocs-material (the test extra) builds the site")
    before = {p for p in ROOT.iterdir()}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-5000:]
    site = tmp_path / "site"
    # README.md is the home page, with its links into docs/ pointing at the pages.
    home = (site / "index.html").read_text()
    assert 'href="getting-started/"' in home and "matryoshka_default.png" in home
    for page in ("changelog", "contributing", "benchmarks", "reference/configuration"):
        assert (site / page / "index.html").is_file(), page
    assert {p for p in ROOT.iterdir()} == before  # nothing written into the checkout


def test_a_dead_link_fails_the_build(tmp_path: Path) -> None:
    pytest.importorskip("material", reason="mkdocs-material (the test extra) builds the site")
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    for name in ("mkdocs.yml", "README.md", "CHANGELOG.md", "CONTRIBUTING.md"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(ROOT / "scripts", copy / "scripts")
    page = copy / "docs" / "stages.md"
    page.write_text(page.read_text() + "\n[missing](errors.md#no-such-anchor)\n")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=copy, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode != 0
    assert "does not contain an anchor '#no-such-anchor'" in done.stderr
