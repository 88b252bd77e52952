"""What the scripts share: the "training steps only" overrides, A/B rounds in alternating order,
the machine's description and the exit without a final collection (the composed config:
`f2llm.compose`; the step timer: `_step_timer`).

The scripts import it as `_common` (Python puts scripts/ first on the path of
`python scripts/<name>.py`). It imports no Lightning, torch or transformers: the processes that
only start and watch runs (a soak, a screen, the A/B rounds) start in a fraction of a second
instead of seconds.
"""

from __future__ import annotations

import atexit
import gc
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Training steps only: no held-out evaluation, checkpoints, export, loggers, progress bars or
# model summary. The callbacks that shape the run (stages, pruning) or only count (throughput,
# data mix) stay, so the steps timed are the steps the run trains.
TRAINING_STEPS_ONLY = [
    "final_validate=false", "callbacks.matryoshka_eval=null", "callbacks.export=null",
    "callbacks.checkpoint=null", "callbacks.progress=null", "callbacks.lr_monitor=null",
    "~logger", "++trainer.limit_val_batches=0", "++trainer.enable_checkpointing=false",
    "trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false",
]


def scratch_dir(prefix: str) -> Path:
    """A temporary folder for a benchmark run's outputs (checkpoints, exports, logs), removed
    when the script exits: repeated benchmark and test runs leave nothing behind in /tmp."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def exit_without_final_collection() -> None:
    """Skip the interpreter's last garbage collection when this process exits, as the entry
    points do (`f2llm.bootstrap`, not imported here: it sets PROJECT_ROOT to this checkout, and
    bench_ab's runs of another checkout would inherit it). After torch, Lightning and
    transformers are imported that collection takes seconds, and nothing waits on it."""
    atexit.register(gc.freeze)  # frozen objects are left out of every collection


def alternating_rounds(runs: dict[str, Callable[[], float]], rounds: int,
                       report: Callable[[int, str, dict[str, list[float]]], None] | None = None
                       ) -> dict[str, list[float]]:
    """Each of the two `runs` (name -> a measurement, e.g. ms/step) once per round, in
    alternating order (A then B, B then A, ...) so that the machine's drift cancels in the
    per-round ratios. `report(round, name, values so far)` after each measurement."""
    if len(runs) != 2:
        raise ValueError(f"two runs to alternate, got {list(runs)}")
    values: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            values[name].append(runs[name]())
            if report is not None:
                report(r, name, values)
    return values


def cpu_name() -> str:
    """The CPU model (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """CPU model, CPU count, memory, GPUs (nvidia-smi) and OS: where a number was measured."""
    text = f"{cpu_name()}, {os.cpu_count()} CPUs"
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        text += f", {pages / 1024**3:.0f} GiB RAM"
    except (ValueError, OSError):
        pass
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.split("\n")
        if any(gpus):
            text += ", " + ", ".join(g for g in gpus if g)
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{text}, {platform.platform()}"
