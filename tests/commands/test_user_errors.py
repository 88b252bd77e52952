"""Errors a user can fix read as one message, not a traceback; damaged files are named, and a
run folder or the teacher cache carries on past them. Every case runs the command as a user
types it, from a copy of the repository (conftest's `run_cli`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from f2llm.export import export_sentence_transformers
from tests.conftest import copy_repository, run_cli, run_folders, small_run, tiny_encoder

HUB_MESSAGE = ("Error: teacher.path=codefuse-ai/F2LLM-v2-0.6B is not a local folder and not in "
               "the local Hugging Face cache, and HF_HUB_OFFLINE is set. Download it where there "
               "is a network (`huggingface-cli download codefuse-ai/F2LLM-v2-0.6B --local-dir "
               "<folder>`) and set teacher.path=<folder>.")


def one_message(done: subprocess.CompletedProcess[str], expected: str) -> str:
    """The run failed with exactly one `Error: ...` line, which starts with `expected`."""
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(expected), lines[0]
    return lines[0]


def truncate(path: Path) -> Path:
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size // 2)
    return path


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository copy for the commands that stop before any work."""
    return copy_repository(tmp_path_factory.mktemp("clone_errors") / "f2llm")


@pytest.fixture(scope="module")
def trained(trained_repo: Path) -> Path:
    return trained_repo


def test_a_wrapped_user_error_is_one_message_too(capsys: pytest.CaptureFixture[str]) -> None:
    from hydra.errors import InstantiationException

    from f2llm.config_checks import ConfigError
    from f2llm.errors import one_message as reporting

    with pytest.raises(SystemExit) as stopped, reporting():
        try:
            raise ConfigError("data.batch_size must be at least 2 (in-batch negatives)")
        except ConfigError as err:
            raise InstantiationException("Error in call to target 'x'") from err
    assert stopped.value.code == 1
    assert capsys.readouterr().err == ("Error: data.batch_size must be at least 2 (in-batch "
                                       "negatives)\n")
    with pytest.raises(RuntimeError), reporting():  # anything else is not ours to reword
        raise RuntimeError("a bug")


def test_hub_name_offline_is_one_message(clone: Path) -> None:
    done = run_cli(clone, "train", "experiment=prune_distill_80m", timeout=120)
    assert one_message(done, HUB_MESSAGE) == HUB_MESSAGE


def test_full_error_still_shows_the_trace(clone: Path) -> None:
    done = run_cli(clone, "train", "experiment=prune_distill_80m", timeout=120,
                   HYDRA_FULL_ERROR="1")
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "PretrainedNotFound" in done.stderr


def test_failed_config_check_is_one_message(clone: Path) -> None:
    done = run_cli(clone, "train", "objective.mrl_dims=[256,64]", timeout=120)
    one_message(done, "Error: objective.mrl_dims [256, 64]: [256] exceed the hidden size 128 "
                      "(model=tiny)")


def test_data_validation_error_is_one_message(clone: Path, tmp_path: Path,
                                              locale_dir: Path) -> None:
    rows = [{"query": f"text {i}", "passage": "a positive", "negative_1": "a negative"}
            for i in range(4)]
    rows[2]["query"] = ""
    (tmp_path / "news.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = tmp_path / "my_data.yaml"
    manifest.write_text("datasets:\n  - {path: news.jsonl, format: classification, language: en}\n")
    done = run_cli(clone, "train", "data=manifest", f"data.corpus.manifest={manifest}",
                   "data.stages=null", "data.num_workers=0", "trainer.max_steps=2",
                   timeout=300)
    one_message(done, f"Error: {tmp_path / 'news.jsonl'}, line 3, field 'query': empty string")


def test_missing_checkpoint_or_model_is_one_message(clone: Path) -> None:
    done = run_cli(clone, "train", "ckpt_path=logs/train/runs/2020-01-01_00-00-00",
                   timeout=120)
    one_message(done, "Error: ckpt_path=logs/train/runs/2020-01-01_00-00-00: no such "
                      "checkpoint file or run folder")
    done = run_cli(clone, "train", "model.pretrained=./models/no-such-model", timeout=120)
    one_message(done, "Error: model.pretrained=./models/no-such-model: no such folder")
    done = run_cli(clone, "eval", "model_path=logs/train/runs/nowhere/export", timeout=120)
    one_message(done, "Error: model_path=logs/train/runs/nowhere/export: not a model folder, "
                      "run folder or .ckpt file")


def test_damaged_explicit_checkpoint_is_named(trained: Path, tmp_path: Path) -> None:
    run = shutil.copytree(run_folders(trained)[0], tmp_path / "run")
    damaged = truncate(run / "checkpoints" / "last.ckpt")
    for script, setting in (("train", "ckpt_path"), ("train", "init_from"),
                            ("eval", "model_path")):
        done = run_cli(trained, script, f"{setting}={damaged}", timeout=300)
        message = one_message(done, f"Error: {setting}: the checkpoint {damaged} is damaged and "
                                    "cannot be loaded (")
        assert "Errno" in message or "zip" in message, message  # torch's reason, after the name


def test_resume_from_a_run_folder_skips_a_damaged_last_ckpt(trained: Path, tmp_path: Path,
                                                           locale_dir: Path) -> None:
    run = shutil.copytree(run_folders(trained)[0], tmp_path / "run")
    last = truncate(run / "checkpoints" / "last.ckpt")
    fallback = run / "checkpoints" / "stage-stage1-end.ckpt"  # step 2, the stage switch
    before = set(run_folders(trained))
    done = run_cli(trained, "train", f"ckpt_path={run}",
                   *small_run(locale_dir, **{"data.stages.0.steps": 2}))
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert f"ckpt_path: the checkpoint {last} is damaged and cannot be loaded" in output
    assert f"ckpt_path: using {fallback}, the newest checkpoint that loads" in output
    (resumed,) = set(run_folders(trained)) - before
    # Resumed at step 2: two more batches (both in stage 2), and the run finished.
    mix = json.loads((resumed / "data_mix.json").read_text())
    assert mix["batches"] == 4 and mix["by_stage"] == {"stage1": 0.5, "stage2": 0.5}
    assert (resumed / "export" / "README.md").exists()

    truncate(fallback)  # nothing left that loads: one message naming the files
    done = run_cli(trained, "train", f"ckpt_path={run}", timeout=300)
    message = one_message(done, f"Error: ckpt_path={run / 'checkpoints'}: none of its 2 "
                                "checkpoints loads")
    assert "last.ckpt" in message and "stage-stage1-end.ckpt" in message


def test_resume_with_another_embedding_lr_scale_is_one_message(trained: Path,
                                                              locale_dir: Path) -> None:
    run = run_folders(trained)[0]  # trained as the default: module.embedding_lr_scale=4
    done = run_cli(trained, "train", f"ckpt_path={run}", *small_run(locale_dir),
                   "module.embedding_lr_scale=1", timeout=300)
    one_message(done, "Error: module.embedding_lr_scale=1, but the checkpoint was trained with 4 "
                      "(its optimiser state holds other parameter groups): resume with "
                      "module.embedding_lr_scale=4")


def test_truncated_teacher_cache_shard_does_not_stop_a_kd_run(trained: Path, tmp_path: Path,
                                                              locale_dir: Path) -> None:
    student = export_sentence_transformers(tiny_encoder(), tmp_path / "export")  # 32 wide
    kd_run = small_run(locale_dir, **{
        "model.pretrained": student, "model.max_length": 32,
        "callbacks.pruning.target.shape.hidden_size": 16,
        "callbacks.pruning.target.shape.intermediate_size": 32,
        "callbacks.pruning.target.shape.head_dim": 16,
        "callbacks.pruning.target.shape.num_hidden_layers": 2,
        "callbacks.pruning.calibration_texts": 32, "data.stages.0.steps": 4,
        "trainer.max_steps": 4, "final_validate": "false"})
    first = run_cli(trained, "train", "experiment=prune_distill_tiny", *kd_run)
    assert first.returncode == 0, first.stderr[-3000:]
    shards = sorted((trained / "data" / "teacher_cache").glob("*/emb-*.npy"))
    assert shards
    truncate(shards[0])
    again = run_cli(trained, "train", "experiment=prune_distill_tiny", *kd_run)
    assert again.returncode == 0, again.stderr[-3000:]
    output = again.stdout + again.stderr
    assert f"teacher cache: dropping the damaged shard {shards[0]}" in output
    assert "mmap length is greater than file size" in output
    assert "Traceback" not in again.stderr
    # What the shard held was computed again and stored in a shard that loads.
    for emb in shards[0].parent.glob("emb-*.npy"):
        np.load(emb, mmap_mode="r")


def test_eval_of_a_run_folder_skips_a_damaged_last_ckpt(trained: Path, tmp_path: Path,
                                                        locale_dir: Path) -> None:
    run = shutil.copytree(run_folders(trained)[0], tmp_path / "run")
    shutil.rmtree(run / "export")  # a run folder without its export: its checkpoints
    last = truncate(run / "checkpoints" / "last.ckpt")
    done = run_cli(trained, "eval", f"model_path={run}",
                   *[o for o in small_run(locale_dir) if o.startswith("data.corpus.")])
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert f"model_path: the checkpoint {last} is damaged and cannot be loaded" in output
    assert f"model_path: using {run / 'checkpoints' / 'stage-stage1-end.ckpt'}" in output
    assert "bitext/accuracy" in done.stdout  # the table


@pytest.mark.parametrize("override, message", [
    ("model=f2llm_99m", "Could not find 'model/f2llm_99m'"),
    ("experiment=no_such_experiment", "Could not find 'experiment/no_such_experiment'"),
])
def test_unknown_model_or_experiment_is_hydras_message_before_any_work(
        clone: Path, override: str, message: str) -> None:
    done = run_cli(clone, "train", override, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"In 'train': {message}")
    group = override.split("=")[0]
    assert f"Available options in '{group}':\n" in done.stderr  # Hydra lists the valid names
    assert ("\n\tgettext_stage1\n" if group == "experiment" else "\n\tf2llm_80m\n") in done.stderr
    assert "[INFO]" not in done.stderr + done.stdout  # before any work (no wall-time bound)
