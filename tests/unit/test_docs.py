"""The documentation: the configuration reference is what `scripts/config_reference.py` writes
from configs/, the documents cited by name exist, and the tracked files speak of the project
alone (the site built with `mkdocs build --strict`: tests/commands/test_docs.py)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import ROOT


def tracked_files() -> list[Path]:
    """The repository's tracked text files (`git ls-files`)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
                           ).stdout.decode().split("\0")
    files = []
    for name in filter(None, names):
        path = ROOT / name
        if path.is_file() and b"\0" not in path.read_bytes()[:8192]:
            files.append(path)
    return files


def config_reference() -> ModuleType:
    """scripts/config_reference.py as a module (registered: its dataclasses need it)."""
    spec = importlib.util.spec_from_file_location("config_reference",
                                                  ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_generated_from_the_configs() -> None:
    reference = config_reference()
    page = ROOT / "docs" / "reference" / "configuration.md"
    assert page.read_text() == reference.render(), (
        "docs/reference/configuration.md is out of date: run python scripts/config_reference.py")


def test_config_reference_lists_every_key_with_its_meaning() -> None:
    page = (ROOT / "docs" / "reference" / "configuration.md").read_text()
    # The first row of a key is the file of its group that defines it; the model files that
    # build on f2llm_0_6b repeat its meanings.
    for key, meaning in [("data.alpha", "proportional to n \\*\\* alpha"),
                         ("model.shape.hidden_size", "the embedding dim"),
                         ("trainer.max_steps", "argument of `lightning.Trainer`"),
                         ("callbacks.pruning.hidden", "first hidden channels"),
                         ("scheduler.restart_per_stage", "each stage of data.stages replays")]:
        rows = [line for line in page.splitlines() if line.startswith(f"| `{key}` |")]
        assert rows and meaning in rows[0], (key, rows)
        if key.startswith("model.shape."):
            assert all(meaning in row for row in rows), rows
    assert "| – |" not in page  # every key has a meaning


# Words that belong to where the project is developed, not to the project: (pattern, lines
# that may hold it anyway). The allowed uses are narrow: pytest's and POSIX's sessions.
NOCASE = re.IGNORECASE
FORBIDDEN: list[tuple[re.Pattern[str], re.Pattern[str] | None]] = [
    (re.compile(r"\bissues? #?\d+", NOCASE), None),
    (re.compile(r"\bSPEC\b"), None),  # capitals: `spec` is a word of the code
    (re.compile(r"\b(SPEC|STYLE)\.md\b", NOCASE), None),
    (re.compile(r"\bsessions?\b", NOCASE),
     re.compile(r"scope=\"session\"|start_new_session|pytest_session\w*|pytest\.Session"
                r"|session\.(config|exitstatus)|session of its own|test session")),
    (re.compile(r"\bdevice (tool|machine|call)s?\b", NOCASE), None),
    (re.compile(r"\brun\(command=", NOCASE), None),
    (re.compile(r"\bcarry=", NOCASE), None),
    (re.compile(r"\bfarm-", NOCASE), None),
    (re.compile(r"\bhelpers?\b", NOCASE), None),
    (re.compile(r"\bthe lead\b", NOCASE), None),
    (re.compile(r"/work/"), None),
]


def test_tracked_files_speak_of_the_project_alone() -> None:
    this = Path(__file__).resolve()
    found = []
    for path in tracked_files():
        if path.resolve() == this:
            continue  # the patterns themselves
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            for pattern, allowed in FORBIDDEN:
                if pattern.search(line) and not (allowed and allowed.search(line)):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, f"{len(found)} lines:\n" + "\n".join(found)


# Documents named in the tracked files that are written by a run, not kept in the repository.
GENERATED_DOCUMENTS = {"docs/gpu_check.md"}


def test_documents_cited_by_name_exist() -> None:
    cited = re.compile(r"(?<![\w/.-])((?:docs/[\w/.-]+|[A-Z][A-Z_]+)\.md)\b")
    missing = []
    for path in tracked_files():
        if path.name == "CHANGELOG.md":
            continue  # it names files that were moved or removed
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            for name in cited.findall(line):
                if name not in GENERATED_DOCUMENTS and not (ROOT / name).is_file():
                    missing.append(f"{path.relative_to(ROOT)}:{number}: {name}")
    assert not missing, "\n".join(missing)
