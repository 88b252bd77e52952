"""The public F2LLM-v2 data recipe's commands as a user types them: `scripts/f2llm_v2_data.py`
(the dry-run table, the dataset map on the command line, download offline) and the `Done when`
training on both layouts (the recipe in one process: tests/unit/test_f2llm_v2.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from f2llm.data.sources.f2llm_v2 import EXAMPLE_NAMES, write_synthetic
from f2llm.model.tokenizer import load_tokenizer
from tests.conftest import (
    F2LLM_V2_EXAMPLES,
    ROOT,
    copy_repository,
    run_python,
    user_env,
    word_level_tokenizer,
)

NAMES = list(EXAMPLE_NAMES)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


def test_the_dataset_map_fixes_unknown_names_typed_on_the_command_line(tmp_path: Path) -> None:
    """The map as the unknown-names message suggests it (the message itself:
    tests/unit/test_f2llm_v2.py)."""
    root = write_synthetic(tmp_path / "raw", "raw", ["msmarco", "my_faq", "my_topics"], 8)
    done = run_python([sys.executable, "scripts/f2llm_v2_data.py", "table",
                       f"data.corpus.root={root}", "data.corpus.datasets={my_faq: {format: "
                       "retrieval, language: de}, my_topics: {format: clustering}}"],
                      ROOT, user_env(), 120)
    assert done.returncode == 0, done.stderr[-2000:]
    row = next(x.split() for x in done.stdout.splitlines() if x.startswith("my_faq "))
    assert row[1:3] == ["retrieval", "de"] and row[-1] == "override"


def test_download_offline_fails_fast_naming_the_command(tmp_path: Path) -> None:
    done = run_python([sys.executable, "scripts/f2llm_v2_data.py", "download", "--root",
                       tmp_path / "dl", "--datasets", "msmarco"], ROOT, user_env(), 60)
    assert done.returncode == 1
    assert "python scripts/f2llm_v2_data.py download --root <folder>" in done.stderr


def test_dry_run_prints_the_table_and_group_probabilities(tmp_path: Path) -> None:
    root = write_synthetic(tmp_path / "raw", "raw", NAMES, [10 * (i + 1) for i in
                                                             range(len(NAMES))])
    done = run_python([sys.executable, "scripts/f2llm_v2_data.py", "table",
                       f"data.corpus.root={root}", "data.alpha=0.5"], ROOT, user_env(), 120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    for name, (fmt, language) in F2LLM_V2_EXAMPLES.items():
        row = next(line.split() for line in lines if line.startswith(name + " "))
        assert row[1:3] == [fmt, language]
    groups = lines[lines.index(next(x for x in lines if x.startswith("stage stage2"))) + 2:]
    probs = {g.split()[0]: float(g.split()[-1]) for g in groups}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    sizes = {n: 10 * (i + 1) for i, n in enumerate(NAMES)}
    total = sum(s ** 0.5 for s in sizes.values())
    assert probs["mqa_fi"] == pytest.approx(sizes["mqa_fi"] ** 0.5 / total, abs=1e-5)


def _train(cwd: Path, root: Path, extra: list[str]) -> subprocess.CompletedProcess:
    # The command as the user types it, in a copy of the repository at `cwd` (its data/ and
    # logs/ are the copy's).
    copy_repository(cwd)
    cmd = [sys.executable, "src/f2llm/train.py", "experiment=f2llm_v2_stage2",
           f"data.corpus.root={root}", "model=tiny", "trainer=cpu", "trainer.max_steps=20",
           "data.batch_size=16", *extra]
    return run_python(cmd, cwd, user_env(), 900)


def test_a_tokenizer_other_than_the_datas_stops_the_training_before_any_step(
        tmp_path: Path, tokenizer) -> None:
    """As a user meets it (the check itself: tests/unit/test_f2llm_v2.py)."""
    other = word_level_tokenizer(tmp_path / "other")
    root = write_synthetic(tmp_path / "tok", "tokenized", ["msmarco"], 8, tokenizer=tokenizer)
    done = _train(tmp_path / "f2llm", root, ["trainer.max_steps=2", f"model.tokenizer={other}"])
    assert done.returncode != 0
    assert "made with the Qwen3 tokenizer" in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("layout", ["raw", "tokenized"])
def test_done_when_command_trains_offline(tmp_path: Path, tokenizer, layout: str) -> None:
    root = write_synthetic(tmp_path / layout, layout, NAMES, 64,
                           tokenizer=tokenizer if layout == "tokenized" else None)
    repo = tmp_path / "f2llm"
    done = _train(repo, root, [])
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (repo / "logs" / "train" / "runs").iterdir()
    mix = json.loads((run / "data_mix.json").read_text())
    assert mix["batches"] == 20
    drawn = mix["batches_by_stage_dataset_format_language"]
    assert len({row[1] for row in drawn}) >= 5
    for stage, dataset, fmt, language, _ in drawn:
        assert stage == "stage2" and (fmt, language) == F2LLM_V2_EXAMPLES[dataset], dataset
    assert (repo / "data" / "f2llm_v2").is_dir()
    assert (run / "export" / "modules.json").exists()
