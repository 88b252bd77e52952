"""The first import of every entry point (`train.py`, `eval.py`, `merge.py`, `mine.py`).

Run as a script, `python <checkout>/src/f2llm/train.py`, Python puts `src/f2llm/` first on
`sys.path`, where our subpackages (`data`, `model`, ...) would shadow same-named top-level
modules of other libraries; importing this module takes that folder off `sys.path` before the
entry point imports anything else (ruff's isort keeps it first: `[tool.ruff.lint.isort]`).
Importing `f2llm` itself is safe there: `src/f2llm/` holds no `f2llm`, and `__init__` is empty.

`ROOT` is the project root, the checkout the runs belong to: the entry points read their Hydra
configs from its `configs/` (`CONFIG_DIR`), and `PROJECT_ROOT`, which `paths.root_dir` reads, is
set to it, so configs, data and logs come from one checkout whatever the working folder.
- `python <checkout>/src/f2llm/<name>.py`: the checkout holding the script, even when the code
  is imported from another checkout's install (a repository copy writes into its own `logs/`).
- a console script (`f2llm-train`, ...), `python -m f2llm.<name>`, or an import (tests,
  scripts/): the checkout holding the imported `f2llm` package. Console scripts come from
  `pip install -e <checkout>`; configs/ is not in a wheel.

The lightning-hydra-template sets the same variable with `rootutils.setup_root`. Not
`${hydra:runtime.cwd}`: OmegaConf resolves a resolver's default before the call, and a
multirun makes its sweep folder before any job has a HydraConfig. Always set, never inherited:
a caller's variable (a test process, another project) would otherwise send this checkout's runs
elsewhere; `paths.root_dir=...` moves data and logs on purpose.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _entry_point_folder() -> Path | None:
    """The `src/f2llm/` folder of the entry point run as `__main__` (by path or by `-m`), or
    None when `__main__` is something else (a console script, pytest, a script of scripts/)."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if main is None:
        return None
    folder = Path(main).resolve().parent
    return folder if folder.name == PACKAGE.name and (folder / "__init__.py").is_file() else None


_folder = _entry_point_folder()
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() not in {PACKAGE, _folder}]
ROOT = (_folder or PACKAGE).parents[1]
CONFIG_DIR = str(ROOT / "configs")  # hydra.main's config_path
os.environ["PROJECT_ROOT"] = str(ROOT)


def exit_without_final_collection() -> None:
    """Skip the interpreter's last garbage collection when this process exits.

    At exit Python collects every object still alive; after a run that is all of torch's,
    Lightning's and transformers' (about 600,000), and it took 1.8-2.1 s of every command on a
    2-core machine (0.25 s without). The process is ending, so the OS takes the memory back;
    nothing waits on that collection: Lightning closes the loggers and checkpoint files at the
    end of fit, and `logging` flushes its handlers in an exit handler of its own."""
    atexit.register(gc.freeze)  # frozen objects are left out of every collection
