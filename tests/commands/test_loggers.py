"""`logger=<name>` as a user types it: two steps through `python src/f2llm/train.py` in a copy
of the repository, then what each logger wrote, read back the way its user reads it (the CSV
file, TensorBoard's events, the MLflow store through MLflow's client, W&B's offline run file)."""

from __future__ import annotations

import csv
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from f2llm.errors import UserError
from f2llm.loggers import MissingPackage, build_loggers, log_config, mlflow_metric_name
from tests.conftest import compose_train, run_cli, run_folders, small_run

# Beside small_run (two steps, held out at step 2): every step's loss logged.
EVERY_STEP = ("trainer.log_every_n_steps=1",)
FULL = 32  # the tiny shape's width: the held-out metrics at full width are `...@32`


def train(repo: Path, locale_dir: Path, *args: str, **env: str) -> str:
    done = run_cli(repo, "train", *args, *small_run(locale_dir, steps=2), *EVERY_STEP, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def run_config(run: Path) -> dict:
    return yaml.safe_load((run / ".hydra" / "config.yaml").read_text())


def test_many_loggers_write_csv_tensorboard_and_mlflow(repo_copy: Path,
                                                       locale_dir: Path) -> None:
    before = set(run_folders(repo_copy))
    train(repo_copy, locale_dir, "logger=many_loggers")
    (run,) = set(run_folders(repo_copy)) - before
    lr = run_config(run)["optimizer"]["lr"]

    # CSV: a row per logged step, the training loss and the held-out scores as columns.
    with (run / "csv" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    losses = [r for r in rows if r["train/loss"]]
    assert [int(r["step"]) for r in losses] == [0, 1]
    held_out = [r for r in rows if r[f"val/bitext/accuracy@{FULL}"]]
    assert len(held_out) == 1 and 0.0 <= float(held_out[0][f"val/bitext/accuracy@{FULL}"]) <= 1
    assert {"val/retrieval/ndcg_at_10@8", "lr-AdamW/model"} <= set(rows[0])
    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    assert hparams["optimizer"]["lr"] == lr

    # TensorBoard: as without the others, scalars and the figure.
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train/loss", f"val/bitext/accuracy@{FULL}"} <= set(events.Tags()["scalars"])
    assert "val/matryoshka" in events.Tags()["images"]

    # MLflow: the project's store under logs/mlflow/, read with MLflow's client.
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{repo_copy / 'logs' / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "train"]
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED"
    history = client.get_metric_history(found.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [0, 1]
    scores = client.get_metric_history(found.info.run_id, f"val/bitext/accuracy_dim{FULL}")
    assert [m.step for m in scores] == [int(held_out[0]["step"])]
    assert scores[0].value == pytest.approx(float(held_out[0][f"val/bitext/accuracy@{FULL}"]))
    params = found.data.params
    assert float(params["optimizer/lr"]) == lr
    assert params["paths/output_dir"] == str(run)  # from the MLflow run to the run folder
    images = client.list_artifacts(found.info.run_id, "images")
    assert any(Path(i.path).name.startswith("val~matryoshka+step+2+") for i in images)


def wandb_records(path: Path) -> Iterator[object]:
    """The records of a W&B run file (`run-<id>.wandb`: LevelDB's log format, 32 KiB blocks of
    chunks with a 7-byte header, after a 7-byte file header), as W&B's protobuf `Record`s."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, header = 32 * 1024, 7
    pos, chunks = header, []
    while pos + header <= len(data):
        if block - pos % block < header:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        chunks.append(data[pos + header:pos + header + length])
        pos += header + length
        if kind in (1, 4):  # a whole record, or its last chunk
            record = Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def item_key(item: object) -> str:
    """A history or config item's key (W&B stores one with `/` as its parts)."""
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_keeps_one_run_per_multirun_job(repo_copy: Path, locale_dir: Path) -> None:
    sweeps = repo_copy / "logs" / "train" / "multiruns"
    before = set(sweeps.glob("*"))
    out = train(repo_copy, locale_dir, "-m", "logger=wandb", "optimizer.lr=1e-3,2e-3",
                WANDB_MODE="offline")
    assert "offline" in out
    (sweep,) = set(sweeps.glob("*")) - before
    for job, lr in (("0", 1e-3), ("1", 2e-3)):
        (run_file,) = (sweep / job / "wandb").glob("offline-run-*/run-*.wandb")
        history, config, exits = {}, {}, []
        for record in wandb_records(run_file):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                history |= {item_key(i): json.loads(i.value_json)
                            for i in record.history.item}
            elif kind == "config":
                config |= {item_key(i): json.loads(i.value_json)
                           for i in record.config.update}
            elif kind == "exit":
                exits.append(record.exit.exit_code)
        assert {"train/loss", f"val/bitext/accuracy@{FULL}", "trainer/global_step"} <= set(history)
        assert 0.0 <= history[f"val/bitext/accuracy@{FULL}"] <= 1.0
        assert config["optimizer"]["lr"] == lr  # each job its own run, with its own config
        assert exits == [0]
        media = run_file.parent / "files" / "media" / "images" / "val"
        assert list(media.glob("matryoshka_*.png"))  # the figure, as W&B media


def test_mlflow_metric_names_keep_the_dim() -> None:
    assert mlflow_metric_name("val/retrieval/recall_at_5@32") == "val/retrieval/recall_at_5_dim32"
    assert mlflow_metric_name("train/loss@1024") == "train/loss_dim1024"
    assert mlflow_metric_name("mix/language/sr@latin") == "mix/language/sr_latin"
    assert mlflow_metric_name("lr-AdamW/model") == "lr-AdamW/model"


def test_a_logger_without_its_package_names_the_setting_and_the_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.loggers import wandb
    from lightning_utilities.core.imports import RequirementCache

    # What Lightning's WandbLogger finds where wandb is not installed.
    monkeypatch.setattr(wandb, "_WANDB_AVAILABLE", RequirementCache("wandb>=999"))
    cfg = compose_train(["logger=wandb", f"paths.output_dir={tmp_path}"])
    with pytest.raises(MissingPackage, match=r"logger\.wandb needs .*wandb>=999.*\.\[loggers\]"):
        build_loggers(cfg.logger)


def test_wandb_without_a_login_says_how_to_log_offline(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))  # no stored login
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    cfg = compose_train(["logger=wandb", f"paths.output_dir={tmp_path}"])
    with pytest.raises(UserError, match=r"logger=wandb: No API key .* WANDB_MODE=offline"):
        log_config(build_loggers(cfg.logger), cfg)
