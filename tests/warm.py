"""`python <script>.py <args>` for the tests, started from a warm interpreter.

A command the tests run (`python src/f2llm/train.py ...`, a README snippet, a script of
scripts/) spends about 5 s of CPU importing torch, Lightning, transformers and the rest before
its first line of work; the suite runs some hundred of them. `WarmPython` keeps one server
process per test process that has imported those libraries once (`PRELOAD`, third-party only),
and runs each command in a `fork` of it: a child that starts as that process did, then becomes
the command exactly as `python <script> <args>` would (its argv, working folder and environment,
`sys.path[0]` the script's folder, a fresh `__main__` with the script's `__file__`, stdin from
/dev/null), runs it, and ends as Python ends (threads joined, exit handlers, the exit code of
`sys.exit` or 1 with the traceback for an uncaught exception). f2llm itself is not preloaded:
every command imports the code under test afresh (`f2llm.bootstrap` reads the project root from
the `__main__` it finds).

A command with a `PYTHONPATH` of its own gets the `sys.path` that gives (its entries after the
script's folder, before the standard library); the child execs a fresh interpreter instead when
one of those folders holds a module the server imported from elsewhere. Only what a fork cannot
give the same way runs as a plain subprocess: a command whose environment differs from the
server's otherwise (libraries read some variables at import, e.g. huggingface_hub's `HF_HOME`,
Lightning's `RANK`), interpreter options (`python -m`, `-c`), a program that is not Python, a
second command while one runs, or a server that could not start without threads (a fork keeps
only the thread that forks).
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import importlib.machinery
import json
import os
import select
import signal
import subprocess
import sys
import threading
import types
from pathlib import Path

# What a run of the default imports besides f2llm (about 90% of its import time), and what the
# README's snippets and the scripts add. Not matplotlib.pyplot (it picks a backend) nor
# sentence_transformers (its import prints a bitsandbytes notice a run of the default never shows).
_SITE_PATH: list[str] = []

PRELOAD = ("torch", "numpy", "pyarrow", "datasets", "transformers", "transformers.modeling_utils",
           "transformers.models.qwen3.modeling_qwen3", "tokenizers", "safetensors", "hydra",
           "hydra.main", "omegaconf", "lightning", "lightning.pytorch", "torchmetrics",
           "tensorboard", "matplotlib.figure", "matplotlib.backends.backend_agg", "sklearn",
           "sklearn.linear_model", "scipy.stats", "huggingface_hub")
# Threads a fork may leave behind: jemalloc's (pyarrow's allocator) background thread, which
# jemalloc's own fork handlers restart in the child.
FORK_SAFE_THREADS = {"jemalloc_bg_thd"}


# --- the server (`python tests/warm.py`) ------------------------------------------------------


def _python_path(env: dict[str, str]) -> list[str]:
    """The entries `PYTHONPATH` puts on `sys.path` (absolute, from the working folder)."""
    return [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


def _serve() -> None:
    # sys.path past this file's folder: the server's PYTHONPATH entries, then the standard
    # library and site-packages. A command's PYTHONPATH replaces the former.
    global _SITE_PATH
    own = _python_path(dict(os.environ))
    _SITE_PATH = [p for p in sys.path[1:] if p not in own]
    for name in PRELOAD:
        # An optional extra this environment lacks: a command that needs it imports it.
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    requests, replies = os.fdopen(os.dup(0), "r"), os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    threads = [Path(f"/proc/self/task/{task}/comm").read_text().strip()
               for task in os.listdir("/proc/self/task") if int(task) != os.getpid()]
    others = [name for name in threads if name not in FORK_SAFE_THREADS]
    replies.write(json.dumps({"threads": others}) + "\n")
    replies.flush()
    if others:
        return
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            requests.close()
            replies.close()
            _become(request)  # ends the child: SystemExit (or an exception) leaves _serve
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


def _become(request: dict) -> None:
    """This child becomes `python <script> <args>` as the request gives it, and runs it."""
    os.setsid()  # its own process group: a timeout stops it with what it started
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, name in ((1, "stdout"), (2, "stderr")):
        file = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(file, fd)
        os.close(file)
    script, *args = request["argv"][1:]
    path = os.path.abspath(script)
    entries = _python_path(request["env"])
    imported = {name.partition(".")[0] for name in sys.modules}
    if any(name.partition(".")[0] in imported
           for entry in entries if entry not in _SITE_PATH and os.path.isdir(entry)
           for name in os.listdir(entry)):
        # A folder of the command's PYTHONPATH holds a module this process imported from
        # elsewhere: only a fresh interpreter imports it from there.
        os.execve(sys.executable, [sys.executable, *request["argv"][1:]], request["env"])
    sys.argv = [script, *args]
    sys.path[:] = [os.path.dirname(path), *entries, *_SITE_PATH]
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=path, __cached__=None, __builtins__=builtins, __spec__=None,
                         __loader__=importlib.machinery.SourceFileLoader("__main__", path))
    sys.modules["__main__"] = main
    code = compile(Path(path).read_bytes(), path, "exec")
    try:
        exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException as err:  # as Python reports it: the script's frames, not these
        err.__traceback__ = err.__traceback__.tb_next
        sys.excepthook(type(err), err, err.__traceback__)
        raise SystemExit(1) from None
    raise SystemExit(0)


# --- the client -------------------------------------------------------------------------------


class WarmPython:
    """Runs `[sys.executable, script, *args]` commands as `subprocess.run(..., capture_output=
    True, text=True, timeout=...)` would, in forks of a server started with `env`."""

    def __init__(self, env: dict[str, str], scratch: Path) -> None:
        self.env, self.scratch, self.server = dict(env), scratch, None
        self.lock = threading.Lock()
        self.started = False

    def _start(self) -> bool:
        if not self.started:
            self.started = True
            # Unbuffered: `readline` takes no byte past its line, so `select` on the pipe sees
            # a reply that has arrived and not been read.
            server = subprocess.Popen([sys.executable, __file__], env=self.env, bufsize=0,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      cwd=self.scratch)
            hello = server.stdout.readline()
            if hello and not json.loads(hello)["threads"]:
                self.server = server
            else:
                server.kill()
                server.wait()
        return self.server is not None and self.server.poll() is None

    def warm(self, argv: list[str], env: dict[str, str]) -> bool:
        """Whether `argv` with `env` can run in a fork (see the module's docstring)."""
        others = {k for k in env.keys() | self.env.keys() if env.get(k) != self.env.get(k)}
        return (len(argv) >= 2 and argv[0] == sys.executable and argv[1].endswith(".py")
                and others <= {"PYTHONPATH"})

    def run(self, argv: list[str], cwd: Path | str, env: dict[str, str],
            timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        argv = [str(a) for a in argv]
        if not (self.warm(argv, env) and self.lock.acquire(blocking=False)):
            return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        try:
            if not self._start():
                return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                                      timeout=timeout)
            return self._run(argv, Path(cwd), env, timeout)
        finally:
            self.lock.release()

    def _run(self, argv: list[str], cwd: Path, env: dict[str, str],
             timeout: float | None) -> subprocess.CompletedProcess[str]:
        out, err = self.scratch / "stdout", self.scratch / "stderr"
        request = {"argv": argv, "cwd": str(cwd.resolve()), "env": env,
                   "stdout": str(out), "stderr": str(err)}
        self.server.stdin.write(json.dumps(request).encode() + b"\n")
        pid = json.loads(self.server.stdout.readline())["pid"]
        timed_out = not select.select([self.server.stdout], [], [], timeout)[0]
        if timed_out:  # stop the command and what it started; the server then reports it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        code = json.loads(self.server.stdout.readline())["code"]
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
        if timed_out:
            raise subprocess.TimeoutExpired(argv, timeout, output=stdout, stderr=stderr)
        return subprocess.CompletedProcess(argv, code, stdout, stderr)

    def close(self) -> None:
        if self.server is not None:
            self.server.stdin.close()
            self.server.wait(timeout=60)
            self.server = None


if __name__ == "__main__":
    _serve()
