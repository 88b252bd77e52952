"""kill -9 a training process at a random step; resuming from its run folder reproduces the
uninterrupted run's losses step for step."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest

from tests.conftest import ROOT, run_python, tiny_overrides, user_env


class StepLog(L.Callback):
    """Appends (step, position, stage, loss) per training step to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps([trainer.global_step, int(batch.position), batch.stage,
                                 float(outputs["loss"])]) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def command(tmp: Path, locale: Path, name: str, log: Path, *extra: str) -> list[str]:
    overrides = tiny_overrides(tmp / name, locale, **{
        "paths.data_dir": str(tmp / "data"), "trainer.max_steps": 10,
        "trainer.val_check_interval": 100, "callbacks.checkpoint.every_n_train_steps": 2,
        "callbacks.export": None, "final_validate": False, "data.alpha": 0.0,
        "data.stages.0.steps": 5, "data.stages.1.steps": 5,
    })
    return [sys.executable, str(ROOT / "src/f2llm/train.py"), *overrides,
            f"hydra.run.dir={tmp / name / 'run'}",
            "+callbacks.step_log._target_=tests.commands.test_kill_resume.StepLog",
            f"+callbacks.step_log.path={log}", *extra]


def read(log: Path) -> list[list]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_kill_9_then_resume_equals_uninterrupted(tmp_path: Path, locale_dir: Path) -> None:
    # This checkout's code, whichever copy of f2llm is installed; and the tests' StepLog.
    env = user_env(PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    full_log = tmp_path / "full.jsonl"
    ran = run_python(command(tmp_path, locale_dir, "full", full_log), ROOT, env, 600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    full = read(full_log)
    assert [s[0] for s in full] == list(range(1, 11))

    kill_after = random.Random().randint(3, 8)  # any step past the first checkpoint (step 2)
    killed_log = tmp_path / "killed.jsonl"
    proc = subprocess.Popen(command(tmp_path, locale_dir, "killed", killed_log), cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while len(read(killed_log)) < kill_after and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(read(killed_log))
    assert done < 10, "the run finished before it could be killed"

    resumed_log = tmp_path / "resumed.jsonl"
    ran = run_python(command(tmp_path, locale_dir, "resumed", resumed_log,
                             f"ckpt_path={tmp_path / 'killed' / 'run'}"), ROOT, env, 600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    resumed = read(resumed_log)
    first = resumed[0][0]
    assert first <= done + 1 and resumed[-1][0] == 10  # resumed at a checkpoint, ran to the end
    expected = {s[0]: s for s in full}
    for step, position, stage, loss in resumed:
        assert [position, stage] == expected[step][1:3]
        assert loss == pytest.approx(expected[step][3], rel=1e-5)
