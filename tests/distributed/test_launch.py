"""How a run's processes start: Lightning's subprocess launcher inside a Hydra multirun, torchrun
across two simulated nodes (kill -9 and resume), Hydra's submitit launcher. The multi-process
tests run the commands as a user types them, in a repository copy; a callback of this module
(`RankLog`, added with `+callbacks.rank_log`) records what each rank trained with."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf, open_dict

from f2llm.launch import multirun_job_ranks, rank_arguments
from f2llm.sweep import SweepResults
from tests.conftest import (
    CONFIGS,
    ROOT,
    copy_repository,
    run_cli,
    run_python,
    small_run,
    user_env,
)

SCALING = ROOT / "docs" / "scaling.md"  # the page with the two-node command


class RankLog(L.Callback):
    """Appends [step, lr, loss, sum of the weights] after each training step to
    `rank<global rank>.jsonl` in the rank's own `trainer.default_root_dir` (its run folder).
    With `hold_after_step`, the rank then stops there, alive, until it is killed: a test kills
    the run at that step, not at whichever step it reached by then."""

    def __init__(self, hold_after_step: int | None = None) -> None:
        self.hold_after_step = hold_after_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        total = sum(float(p.detach().double().sum()) for p in pl_module.parameters())
        row = [trainer.global_step, trainer.optimizers[0].defaults["lr"], float(outputs["loss"]),
               total]
        path = Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.jsonl"
        with path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())  # a kill -9 keeps every step logged
        while trainer.global_step == self.hold_after_step:
            time.sleep(1)


RANK_LOG = "+callbacks.rank_log._target_=tests.distributed.test_launch.RankLog"


def rank_log(folder: Path, rank: int) -> list[list]:
    path = folder / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# Added to the user's environment: this checkout's code with RankLog importable, and one thread
# per process (the processes share 2 cores, and every run computes alike).
ENV = {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1"}


# --- A multirun whose jobs train on several processes -----------------------------------------


def test_rank_arguments_run_one_job_of_the_sweep() -> None:
    argv = ["-m", "--config-name", "train", "-cd=/cfg", "optimizer.lr=1e-3,2e-3", "trainer=x"]
    assert rank_arguments(argv, ["hydra.mode=MULTIRUN", "hydra/launcher=submitit_local"],
                          ["optimizer.lr=0.002", "trainer=x"]) == [
        "--config-name", "train", "-cd=/cfg", "hydra/launcher=submitit_local",
        "optimizer.lr=0.002", "trainer=x", "hydra.mode=RUN"]


def _hydra_config(tmp_path: Path, mode: str) -> None:
    """The HydraConfig of a job of a multirun (or of a single run) in folder `tmp_path / 1`."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True,
                      overrides=[f"paths.root_dir={ROOT}", "optimizer.lr=0.002",
                                 "trainer=ddp_sim", f"hydra.mode={mode}"])
    with open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(tmp_path / "1")
    HydraConfig.instance().set_config(cfg)


def test_lightning_runs_a_multirun_job_alone_in_its_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The function Lightning's subprocess launcher builds a rank's command with (Lightning 2.6):
    # this test fails if it stops taking `sys.argv` and `hydra.run.dir`.
    from lightning.pytorch.strategies.launchers import subprocess_script

    sweep = ["-m", "optimizer.lr=1e-3,2e-3", "trainer=ddp_sim"]
    monkeypatch.setattr(sys, "argv", ["src/f2llm/train.py", *sweep])
    try:
        _hydra_config(tmp_path, "MULTIRUN")
        environ = dict(os.environ)
        with multirun_job_ranks():
            command, cwd = subprocess_script._hydra_subprocess_cmd(local_rank=1)
            os.environ.update(LOCAL_RANK="0", MASTER_PORT="12345")  # as the launcher sets them
        assert dict(os.environ) == environ  # the sweep's next job starts ranks of its own
        assert sys.argv == ["src/f2llm/train.py", *sweep]

        _hydra_config(tmp_path, "RUN")
        with multirun_job_ranks():  # a single run: Lightning's command as it is
            assert sys.argv == ["src/f2llm/train.py", *sweep]
    finally:
        HydraConfig.instance().cfg = None
    job = [f"paths.root_dir={ROOT}", "optimizer.lr=0.002", "trainer=ddp_sim", "hydra.mode=RUN"]
    tail = [*job, f'hydra.run.dir="{tmp_path / "1"}"', "hydra.job.name=train_ddp_process_1",
            "hydra.output_subdir=null"]
    assert list(command[-len(tail):]) == tail, command
    assert "-m" not in command[-len(tail) - 1:] and cwd == os.getcwd()


STEPS = 4
# Both multi-process runs of this module: `STEPS` steps, no validation, no export.
QUIET = {"trainer.val_check_interval": 100, "final_validate": "false", "callbacks.export": "null"}


@pytest.fixture(scope="module")
def multirun(tmp_path_factory: pytest.TempPathFactory, locale_dir: Path) -> Path:
    """The repository copy after a sweep of two jobs of 2 DDP processes each, started by
    Lightning's subprocess launcher (the launcher of `trainer=ddp` and `fsdp`). Job 0 is also
    the one-node run the two-node run must equal."""
    repo = copy_repository(tmp_path_factory.mktemp("multirun") / "f2llm")
    done = run_python(
        [sys.executable, "src/f2llm/train.py", "-m", "optimizer.lr=1e-3,2e-3", "trainer=ddp_sim",
         "trainer.strategy.start_method=popen", *small_run(locale_dir, steps=STEPS, **QUIET),
         RANK_LOG], repo, user_env(**ENV), 600)
    assert done.returncode == 0, done.stderr[-3000:]
    return repo


def test_multirun_of_multi_process_runs(multirun: Path) -> None:
    """Rank 1 of each job trains that job's lr, in its folder."""
    repo = multirun
    (sweep,) = (repo / "logs" / "train" / "multiruns").iterdir()  # no rank swept on its own
    assert not (repo / "logs" / "train" / "runs").exists()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0] != ".") == ["0", "1"]
    rows = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert [(r["job"], r["overrides"][0]) for r in rows] == [(0, "optimizer.lr=0.001"),
                                                             (1, "optimizer.lr=0.002")]
    for job, lr in (("0", 1e-3), ("1", 2e-3)):
        folder = sweep / job
        assert (folder / "train_ddp_process_1.log").is_file()  # rank 1's Hydra log
        ranks = [rank_log(folder, r) for r in (0, 1)]
        for steps in ranks:
            assert [s[0] for s in steps] == list(range(1, STEPS + 1))
            assert all(s[1] == lr for s in steps), steps
        # One model: DDP kept the two replicas equal, step after step.
        assert [s[3] for s in ranks[0]] == pytest.approx([s[3] for s in ranks[1]], rel=1e-9)


# --- Two nodes, simulated: torchrun per node, kill -9 of both, resume --------------------------


def readme_torchrun() -> list[str]:
    """The documented two-node command (one line, run on each node)."""
    (line,) = [ln for ln in SCALING.read_text().splitlines() if ln.startswith("torchrun ")]
    return shlex.split(line, comments=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (torchrun starts each worker in a session of its own)."""
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        for task in Path(f"/proc/{found[-1]}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(child) for child in (task / "children").read_text().split()]
    return found


def node_output(repo: Path, name: str, node: int) -> Path:
    return repo.parent / f"{name}_node{node}.out"


def start_nodes(repo: Path, extra: list[str], name: str) -> list[subprocess.Popen]:
    """The documented torchrun line in `repo`, once per node (output: `node_output`)."""
    argv = readme_torchrun()
    assert argv[0] == "torchrun"
    port = free_port()
    argv = [sys.executable, "-m", "torch.distributed.run",
            *(re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", a) for a in argv[1:]), *extra]
    procs = []
    for node in (0, 1):
        with node_output(repo, name, node).open("w") as out:
            procs.append(subprocess.Popen(argv, cwd=repo, env=user_env(**ENV), stdout=out,
                                          stderr=subprocess.STDOUT))
    return procs


def wait(procs: list[subprocess.Popen], repo: Path, name: str) -> None:
    for node, proc in enumerate(procs):
        assert proc.wait(timeout=600) == 0, node_output(repo, name, node).read_text()[-3000:]


def test_two_nodes_killed_and_resumed_equal_one_node(tmp_path: Path, locale_dir: Path,
                                                     multirun: Path) -> None:
    repo = copy_repository(tmp_path / "f2llm")  # no corpus yet: both nodes start building it
    killed_at = 3  # killed past the first checkpoint (step 2), before the next
    # Job 0 of the multirun's settings (its lr, `STEPS` steps), checkpointed every 2 steps.
    extra = [*small_run(locale_dir, steps=STEPS, **{
        **QUIET, "optimizer.lr": "1e-3", "callbacks.checkpoint.every_n_train_steps": 2}), RANK_LOG]
    run = repo / "logs/train/runs/two_nodes"  # the documented line's hydra.run.dir
    assert f"hydra.run.dir={run.relative_to(repo)}" in readme_torchrun()

    nodes = start_nodes(repo, [*extra, f"+callbacks.rank_log.hold_after_step={killed_at}"],
                        "killed")
    deadline = time.monotonic() + 600
    while (min(len(rank_log(run, r)) for r in (0, 1)) < killed_at
           and all(p.poll() is None for p in nodes)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Both nodes die at once: each torchrun and its worker.
    for pid in [pid for proc in nodes for pid in process_tree(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for proc in nodes:
        proc.wait()
    killed = [rank_log(run, r) for r in (0, 1)]
    assert [len(k) for k in killed] == [killed_at] * 2, killed  # held there, then killed
    # The nodes share paths.data_dir, where each node's local rank 0 found no corpus: one
    # built it under the lock, the other waited and reused it.
    builds = sum("building gettext corpus" in node_output(repo, "killed", n).read_text()
                 for n in (0, 1))
    assert builds == 1

    # Resumed as the page says: the same line, from the killed run, into a folder of its own.
    resume = ["ckpt_path=logs/train/runs/two_nodes",
              "hydra.run.dir=logs/train/runs/two_nodes_resumed"]
    assert " ".join(resume) in " ".join(SCALING.read_text().split())
    resumed_run = repo / "logs/train/runs/two_nodes_resumed"
    wait(start_nodes(repo, [*extra, *resume], "resumed"), repo, "resumed")
    resumed = [rank_log(resumed_run, r) for r in (0, 1)]
    assert [rank_log(run, r) for r in (0, 1)] == killed  # no process of the killed run lived on

    # The same run on one node: 2 processes, the same global ranks and data, started as on a
    # GPU node by Lightning's subprocess launcher (rank 0 is the command's own process): job 0
    # of the multirun.
    (sweep,) = (multirun / "logs" / "train" / "multiruns").iterdir()
    for rank in (0, 1):
        expected = {s[0]: s[2] for s in rank_log(sweep / "0", rank)}
        assert sorted(expected) == list(range(1, STEPS + 1))
        # From the step-2 checkpoint: step 3 again, then the steps the killed run never took.
        assert [s[0] for s in resumed[rank]] == list(range(3, STEPS + 1))
        for step, _, loss, _ in killed[rank] + resumed[rank]:
            assert loss == pytest.approx(expected[step], rel=1e-5), (rank, step)


def test_multinode_sim_trainer_joins_the_processes_torchrun_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"RANK": "1", "GROUP_RANK": "1", "LOCAL_RANK": "0",
                        "LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)  # node 1's process, as torchrun starts it
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["trainer=ddp_multinode_sim",
                                                      f"paths.output_dir={tmp_path}"])
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy.process_group_backend == "gloo"
    assert trainer.strategy.cluster_environment.creates_processes_externally
    assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (2, 1, 2)
    assert (trainer.node_rank, trainer.global_rank) == (1, 1)


# --- Hydra's submitit launcher (the code path of hydra/launcher=slurm) -------------------------


def test_sweep_results_one_row_per_job_from_its_global_rank_zero(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    config = OmegaConf.create({"optimized_metric": "val/bitext/accuracy", "hydra": {
        "mode": RunMode.MULTIRUN, "sweep": {"dir": str(tmp_path)}, "job": {"num": 3}}})
    for rank in (1, 0, 2):  # the tasks of one SLURM job, each ending the job in its process
        monkeypatch.setattr(rank_zero_only, "rank", rank)
        SweepResults().on_job_end(config, JobReturn(
            overrides=["optimizer.lr=0.002"], status=JobStatus.COMPLETED, _return_value=0.5))
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert rows == [{"job": 3, "overrides": ["optimizer.lr=0.002"], "val/bitext/accuracy": 0.5}]



def test_submitit_local_sweep(tmp_path: Path, locale_dir: Path) -> None:
    """Both jobs run in processes of their own (at once) and write their folders; each appends
    its row to results.jsonl."""
    repo = copy_repository(tmp_path / "f2llm")
    # The user's environment as it is (no RankLog): the sweep's own process starts warm.
    done = run_cli(repo, "train", "-m", "hydra/launcher=submitit_local", "optimizer.lr=1e-3,2e-3",
                   *small_run(locale_dir, steps=2))
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (repo / "logs" / "train" / "multiruns").iterdir()
    rows = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    rows.sort(key=lambda r: r["job"])  # in the order the jobs ended
    assert [(r["job"], r["overrides"][0]) for r in rows] == [(0, "optimizer.lr=0.001"),
                                                             (1, "optimizer.lr=0.002")]
    for row in rows:
        folder = sweep / str(row["job"])
        final = json.loads((folder / "final_metrics.json").read_text())
        assert row["val/bitext/accuracy"] == final["val/bitext/accuracy"]
        assert (folder / "export" / "modules.json").is_file()
        assert (folder / "checkpoints" / "last.ckpt").is_file()
