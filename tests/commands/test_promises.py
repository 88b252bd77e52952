"""What the README promises, run as a user runs it: `scheduler.restart_per_stage=true` restarts
the lr at the stage switch; stage 2 switches the held-out queries' instructions on; the `mix/*`
TensorBoard tags (the promises checked through `train()`: tests/integration/test_promises.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning as L
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from f2llm.callbacks import MatryoshkaEval
from tests.conftest import (
    TEST_VAL_CATALOGS,
    TINY_SHAPE,
    copy_repository,
    run_python,
    user_env,
)


class ValidationProbe(L.Callback):
    """Appends (step, instructions on, instructed sets) per held-out evaluation to `path`
    (configured after `MatryoshkaEval`, so it reads the evaluation just made)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        (evaluation,) = [cb for cb in trainer.callbacks if isinstance(cb, MatryoshkaEval)]
        instructed = list(evaluation.scores.instructed)
        with self.path.open("a") as fh:
            fh.write(json.dumps([trainer.global_step, bool(instructed), instructed]) + "\n")


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory, locale_dir: Path) -> Path:
    """`python src/f2llm/train.py <overrides>` in a copy of the repository, as a user runs it:
    two stages of three steps, lr restarted per stage, the mix logged every step."""
    cwd = copy_repository(tmp_path_factory.mktemp("user") / "f2llm")
    probe = cwd / "probe.jsonl"
    overrides = [
        "scheduler.restart_per_stage=true", "callbacks.data_mix.every_n_steps=1",
        f"data.corpus.locale_dir={locale_dir}",
        "data.corpus.val_catalogs=[" + ",".join(TEST_VAL_CATALOGS) + "]",
        "data.corpus.val_min_pairs=16", "data.corpus.val_max_pairs=32", "data.batch_size=8",
        "data.stages.0.steps=3", "data.stages.1.steps=3", "trainer.max_steps=6",
        "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "scheduler.warmup_steps=1",
        *(f"{k}={v}" for k, v in TINY_SHAPE.items()),
        "+callbacks.probe._target_=tests.commands.test_promises.ValidationProbe",
        f"+callbacks.probe.path={probe}",
    ]
    # The copy's code first (the probe callback is imported from the copy's tests/).
    env = user_env(PYTHONPATH=os.pathsep.join([str(cwd / "src"), str(cwd)]))
    done = run_python([sys.executable, "src/f2llm/train.py", *overrides], cwd, env, 900)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (cwd / "logs" / "train" / "runs").iterdir()  # the default run folder
    return run


def scalars(run: Path) -> dict[str, dict[int, float]]:
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)}
            for tag in events.Tags()["scalars"]}


def test_restart_lr_replays_the_schedule_in_stage_2(user_run: Path) -> None:
    lr = scalars(user_run)["lr-AdamW/model"]
    # The embedding group (module.embedding_lr_scale=4 in the default) follows at 4x.
    embedding = scalars(user_run)["lr-AdamW/embedding"]
    assert all(embedding[s] == pytest.approx(4 * lr[s]) for s in lr)
    # Warmup of one step, then cosine decay within each stage of three steps.
    assert lr[1] < lr[0] and lr[2] < lr[1]
    assert lr[3] == pytest.approx(lr[0]) and lr[4] == pytest.approx(lr[1])


def test_mix_tags_are_logged(user_run: Path) -> None:
    tags = set(scalars(user_run))
    assert {"mix/format/retrieval", "mix/format/clustering"} <= tags or {
        "mix/format/retrieval", "mix/format/classification"} <= tags
    languages = {t.removeprefix("mix/language/") for t in tags if t.startswith("mix/language/")}
    assert languages and languages <= {"fr", "de", "ru", "es", "ja", "uk", "en"}


def test_stage_2_switches_held_out_instructions_on(user_run: Path) -> None:
    probe = user_run.parents[3] / "probe.jsonl"
    seen = [json.loads(line) for line in probe.read_text().splitlines()]
    assert [(step, on) for step, on, _ in seen] == [(3, False), (6, True)]
    assert seen[-1][2] == ["classification/text", "clustering/text"]


