"""The commands a page of documentation shows, run as a user types them.

A page's ```bash blocks hold commands (one a line, `\\` continuations joined, `#` comments
dropped) and its ```python blocks snippets; `page_commands` reads them in order. A test module
per page keeps a table with one line per command saying how it is run:
- `Run`: it must work (exit 0, print `output`, make `makes` in each new run folder, `check`);
- `Fails`: it needs what the test machine lacks (a network, a GPU, the user's files): it must
  stop within FAIL_WITHIN_S printing `message`, which the page documents;
- `NotRun`: not run, with the reason.
`check_command` runs one command by its line and fails for a command the table has no line for;
`stale_lines` finds lines whose command left the page.

What is added to a command, and nothing else: its line's `extra` (step counts and the validation
interval) and, to train.py and eval.py on the gettext data, the tests' corpus slice
(`corpus_overrides`: a few languages and catalogs), so a command takes seconds. Never `hydra.*`
or `paths.*`: the command writes where the user's would, in a repository copy. The environment
is the test's (offline; one torch thread, as on a one-core machine).
Placeholders are filled from earlier runs (`<time>`, `<run>`, `<stage1_run>`: the first run of
the page's default training command, or the run of the line named by `time_from`), from folders
the session makes (`<synthetic_folder>`, `<f2llm_v2_folder>`) and for elisions (`…/export`,
`[...]`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import corpus_overrides, run_folders

FAIL_WITHIN_S = 30  # a command that cannot work here must say so this fast
RUN_TIMEOUT_S = 300
TRAIN = "python src/f2llm/train.py"  # the default training run: `<time>` and `<run>`


@dataclass
class Result:
    command: str
    returncode: int
    output: str
    seconds: float
    folders: list[Path]  # run folders it made (logs/<task>/runs/* and multiruns/*)


@dataclass(frozen=True)
class Run:
    """Must exit 0. `extra`: step and validation overrides added; `corpus`: add the test corpus
    (None: when `reads_gettext`); `output`: lines it must print; `makes`: files each new run
    folder must hold (globs); `check`: anything more."""

    extra: tuple[str, ...] = ()
    corpus: bool | None = None
    output: tuple[str, ...] = ()
    makes: tuple[str, ...] = ()
    check: Callable[[Result], None] | None = None
    # `<time>` is the run of the command keyed here (None: the default training run);
    # `keep`: a later command reads this command's run folder.
    time_from: str | None = None
    keep: bool = False


@dataclass(frozen=True)
class Fails:
    """Needs what the test machine lacks (a network, a GPU, weights): a non-zero exit within
    FAIL_WITHIN_S printing `message`, which the page documents."""

    message: str
    corpus: bool | None = None  # as in Run
    extra: tuple[str, ...] = ()
    time_from: str | None = None  # as in Run


@dataclass(frozen=True)
class NotRun:
    reason: str


Table = dict[str, Run | Fails | NotRun]
Command = list[str] | str  # argv of a bash line, source of a python snippet

# --- Reading a page --------------------------------------------------------------------------

_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def fenced_blocks(page: Path, kind: str) -> list[str]:
    """The bodies of the page's ```<kind> blocks, in order."""
    return [body for lang, body in _BLOCK.findall(page.read_text()) if lang == kind]


def page_commands(page: Path) -> list[tuple[str, Command]]:
    """(key, argv) for each bash command, (key, source) for each python snippet, in order. The
    key is the command as written (continuations joined, comment dropped, shell quotes removed);
    a snippet's is "python snippet: <its first line>"."""
    found: list[tuple[str, Command]] = []
    for lang, body in _BLOCK.findall(page.read_text()):
        if lang == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                argv = shlex.split(line, comments=True)
                if argv:
                    found.append((" ".join(argv), argv))
        elif lang == "python":
            found.append((f"python snippet: {body.splitlines()[0]}", body))
    return found


def written_in(page: Path, message: str) -> bool:
    return " ".join(message.split()) in " ".join(page.read_text().split())


def stale_lines(page: Path, table: Table) -> list[str]:
    """The table's lines for commands the page no longer has."""
    on_page = {key for key, _ in page_commands(page)}
    return [key for key in table if key not in on_page]


def reads_gettext(argv: list[str]) -> bool:
    """train.py or eval.py on the embedded gettext corpus (no other `data=`, no experiment on
    the public data)."""
    entry = any(a.endswith(("src/f2llm/train.py", "src/f2llm/eval.py")) for a in argv[:2])
    public = any(a.startswith("experiment=f2llm_v2") for a in argv)
    return (entry and not public
            and all(a == "data=gettext" for a in argv if a.startswith("data=")))


# --- Running them ----------------------------------------------------------------------------


class Session:
    """One repository copy for a page's commands; each runs once (the default training run
    first when a placeholder needs it). `prepare(repo)` writes the files the page tells the
    user to bring."""

    def __init__(self, page: Path, table: Table, repo: Path, locale_dir: Path, scratch: Path,
                 prepare: Callable[[Path], None] | None = None) -> None:
        self.page, self.table = page, table
        self.repo, self.locale_dir, self.scratch = repo, locale_dir, scratch
        self.results: dict[str, Result] = {}
        self.passed: set[str] = set()
        self.base: Path | None = None
        self.env = {k: v for k, v in os.environ.items() if k != "PROJECT_ROOT"}
        self.env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        if prepare is not None:
            prepare(repo)

    def first_run(self) -> Path:
        if self.base is None:
            result = self.run(TRAIN, TRAIN.split(), self.table[TRAIN])
            assert result.returncode == 0, result.output[-3000:]
            (self.base,) = result.folders
        return self.base

    def fill(self, text: str, time_from: str | None = None) -> str:
        if "<f2llm_v2_folder>" in text:
            text = text.replace("<f2llm_v2_folder>", str(self.synthetic_folder()))
        if "<synthetic_folder>" in text:
            text = text.replace("<synthetic_folder>", str(self.scratch / "synthetic"))
        if "<stage1_run>" in text:
            text = text.replace("<stage1_run>", self.first_run().relative_to(self.repo)
                                .as_posix())
        if "<time>" in text or "<run>" in text or "…/export" in text:
            if time_from is not None:
                if time_from not in self.results:  # run it first (a -k selection skipped it)
                    self.run(time_from, dict(page_commands(self.page))[time_from],
                             self.table[time_from])
                (folder,) = self.results[time_from].folders
            else:
                folder = self.first_run()
            run = folder.relative_to(self.repo).as_posix()
            text = (text.replace("<run>", run).replace("logs/train/runs/<time>", run)
                    .replace("…/export", f"{run}/export"))
        return text.replace("[...]", '["File not found"]')

    def synthetic_folder(self) -> Path:
        """A small synthetic copy of the public data (real dataset names), made once."""
        folder = self.scratch / "f2llm_v2"
        if not folder.exists():
            subprocess.run([sys.executable, "scripts/f2llm_v2_data.py", "synthetic", "--root",
                            str(folder), "--layout", "raw"], cwd=self.repo, env=self.env,
                           check=True, capture_output=True, timeout=RUN_TIMEOUT_S)
        return folder

    def run_folders(self) -> set[Path]:
        return set(run_folders(self.repo, "*/*runs/*"))

    def run(self, key: str, command: Command, how: Run | Fails) -> Result:
        if key in self.results:
            return self.results[key]
        if isinstance(command, str):  # a python snippet
            script = self.scratch / f"snippet_{len(self.results)}.py"
            script.write_text(self.fill(command))
            argv = [sys.executable, str(script)]
        else:
            argv = [self.fill(a, how.time_from) for a in command]
            if argv[0] == "python":
                argv[0] = sys.executable
            if how.corpus or (how.corpus is None and reads_gettext(argv)):
                argv += corpus_overrides(self.locale_dir)
            argv += list(how.extra)
        timeout = FAIL_WITHIN_S if isinstance(how, Fails) else RUN_TIMEOUT_S
        before = self.run_folders()
        start = time.monotonic()
        try:
            done = subprocess.run(argv, cwd=self.repo, env=self.env, capture_output=True,
                                  text=True, timeout=timeout)
            code, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"") + (e.stderr or b"")
            code, output = -9, (out.decode() if isinstance(out, bytes) else out)
            output += f"\n[still running after {timeout} s: stopped]"
        result = Result(key, code, output, time.monotonic() - start,
                        sorted(self.run_folders() - before))
        self.results[key] = result
        return result

    def tidy(self, result: Result) -> None:
        """Run folders hold ~0.5 GB of checkpoints each: keep only those a later command
        reads (the default run's and `keep` lines')."""
        if result.command == TRAIN or getattr(self.table[result.command], "keep", False):
            return
        for folder in result.folders:
            shutil.rmtree(folder, ignore_errors=True)

    def summary(self) -> str:
        rows = ["| command | exit | seconds | key line |", "|---|---|---|---|"]
        for r in self.results.values():
            how = self.table[r.command]
            rows.append(f"| `{r.command}` | {r.returncode} | {r.seconds:.0f} | "
                        f"{key_line(r.output, getattr(how, 'message', None))} |")
        return "\n".join(rows)


def key_line(output: str, message: str | None = None) -> str:
    """The line a user looks at: the result of a run, or the message of a failure."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for pattern in (message, "Best value", "held-out bitext accuracy by dim", "bitext/accuracy ",
                    "train records", "Error"):
        if not pattern:
            continue
        hits = [line for line in lines if pattern in line]
        if hits:
            return hits[-1][-160:].replace("|", "/")
    return (lines[-1][-160:] if lines else "").replace("|", "/")


def check_command(session: Session, key: str, command: Command, module: str) -> None:
    """Run the page's command `key` as its table line says, and check what the line promises.
    `module` names the test module holding the table (for the message of a missing line)."""
    how = session.table.get(key)
    assert how is not None, (
        f"{session.page.name} command not in {module}'s table (add one line saying how it is "
        f"run):\n  {key}")
    if isinstance(how, NotRun):
        pytest.skip(f"not run: {how.reason}")
    if key in session.passed:
        return  # the page repeats a command; it ran and passed above
    result = session.run(key, command, how)
    try:
        if isinstance(how, Fails):
            assert result.returncode != 0, result.output[-3000:]
            assert result.returncode != -9, (f"still running after {FAIL_WITHIN_S} s:\n"
                                             f"{result.output[-3000:]}")
            assert how.message in result.output, result.output[-3000:]
            assert written_in(session.page, how.message), (
                f"{session.page.name} does not say {how.message!r}")
            session.passed.add(key)
            return
        assert result.returncode == 0, result.output[-5000:]
        for line in how.output:
            assert line in result.output, (line, result.output[-3000:])
        for pattern in how.makes:
            for folder in result.folders:
                assert list(folder.glob(pattern)), (folder, pattern,
                                                    sorted(p.name for p in folder.iterdir()))
        if how.makes:
            assert result.folders, "no run folder under the copy's logs/"
        if how.check:
            how.check(result)
        session.passed.add(key)
    finally:
        session.tidy(result)
