"""tests/warm.py: a command run in a fork of the warm interpreter is the command a fresh
`python <script> <args>` runs: the same argv, `__file__`, `__name__`, `sys.path[0]`, working
folder and environment; the same output, exit code and traceback; its threads joined and its exit
handlers run; stopped with what it started when it runs past its timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import _WARM, run_python, user_env

SCRIPT = '''
import atexit, os, sys, threading, time
print("argv", sys.argv, "file", __file__, "name", __name__, "path0", sys.path[0])
print("cwd", os.getcwd(), "spec", __spec__, "main", sys.modules["__main__"].__dict__ is globals())
print("env", os.environ.get("F2LLM_TEST_MARK"), "stdin", sys.stdin.read())
what = sys.argv[1]
if what == "exit":
    sys.exit("stopped: a message")
if what == "raise":
    raise ValueError("boom")
if what == "sleep":
    import subprocess
    child = subprocess.Popen(["sleep", "300"])
    print("child", child.pid, flush=True)
    time.sleep(300)
threading.Thread(target=lambda: (time.sleep(0.5), print("thread joined", flush=True))).start()
atexit.register(lambda: print("exit handler ran", flush=True))
'''


@pytest.fixture()
def script(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "what.py"
    path.parent.mkdir()
    path.write_text(SCRIPT)
    return path


@pytest.mark.parametrize("what", ["ok", "exit", "raise"])
def test_a_warm_run_is_the_plain_run(script: Path, tmp_path: Path, what: str) -> None:
    env = user_env()
    argv = [sys.executable, str(script), what]
    plain = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL)
    warm = run_python(argv, tmp_path, env, timeout=120)
    assert _WARM and _WARM[0].server is not None  # it ran in a fork, not as a plain subprocess
    assert (warm.returncode, warm.stdout, warm.stderr) == (plain.returncode, plain.stdout,
                                                           plain.stderr)
    assert {"ok": 0, "exit": 1, "raise": 1}[what] == warm.returncode
    assert f"path0 {script.parent}" in warm.stdout


def test_a_pythonpath_of_its_own_is_the_plain_runs(script: Path, tmp_path: Path) -> None:
    """The command's PYTHONPATH folders come after the script's, as in a fresh interpreter; a
    folder that would shadow a module the server imported gets a fresh interpreter."""
    extra, shadow = tmp_path / "extra", tmp_path / "shadow"
    (extra / "f2llm_test_mod").mkdir(parents=True)
    (extra / "f2llm_test_mod" / "__init__.py").write_text("WHERE = 'extra'\n")
    (shadow / "numpy").mkdir(parents=True)  # imported by the server from site-packages
    (shadow / "numpy" / "__init__.py").write_text("WHERE = 'shadow'\n")
    probe = tmp_path / "bin" / "probe.py"
    probe.write_text("import sys\nimport f2llm_test_mod, numpy\n"
                     "print(f2llm_test_mod.WHERE, getattr(numpy, 'WHERE', 'site'), "
                     "sys.path.index(sys.argv[1]))\n")
    for folders, expected in (([extra], "extra site 1"), ([extra, shadow], "extra shadow 1")):
        env = user_env(PYTHONPATH=os.pathsep.join(str(f) for f in folders))
        argv = [sys.executable, str(probe), str(extra)]
        plain = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=120)
        warm = run_python(argv, tmp_path, env, timeout=120)
        assert _WARM[0].warm(argv, env)
        assert (warm.returncode, warm.stdout) == (0, plain.stdout) == (0, expected + "\n"), (
            warm.stderr[-2000:])


def test_another_environment_runs_as_a_plain_subprocess(script: Path, tmp_path: Path) -> None:
    """Libraries read some variables at import: a run with other ones does not fork."""
    done = run_python([sys.executable, str(script), "ok"], tmp_path,
                      user_env(F2LLM_TEST_MARK="x"), timeout=120)
    assert done.returncode == 0 and "env x" in done.stdout
    assert not _WARM[0].warm([sys.executable, str(script)], user_env(F2LLM_TEST_MARK="x"))


def test_a_timeout_stops_the_command_and_what_it_started(script: Path, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as stopped:
        run_python([sys.executable, str(script), "sleep"], tmp_path, user_env(), timeout=5)
    assert time.monotonic() - start < 60
    child = int(stopped.value.output.split("child ")[1].split()[0])
    time.sleep(0.5)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(
        f"/proc/{child}/stat").read_text().split()[2]
    again = run_python([sys.executable, str(script), "ok"], tmp_path, user_env(), timeout=120)
    assert again.returncode == 0  # the server serves the next command
