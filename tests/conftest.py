"""Shared fixtures and functions: offline hub, one thread per process, a small slice of the
gettext catalogs, the tiny composed config, repository copies and the runs several test modules
read (each made once per test run, by whichever xdist worker asks first), and the check that the
suite leaves the repository clean.

Test modules import these from here, never from each other. torch and f2llm's model and data
modules are imported inside the functions that use them, so a `pytest` process that needs none of
them (the clean-tree test starts two) starts in a second.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread per process: `make test` runs two workers on a 2-core machine and each
# starts subprocesses (gloo ranks, the README's commands). A second OpenMP thread per process
# only spins, waiting for a core another process holds: the same run took up to ten times the
# CPU time. Set before torch is imported; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import contextlib
import copy
import functools
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from filelock import FileLock

from f2llm.compose import CONFIGS, compose_config, compose_train
from tests.warm import WarmPython

if TYPE_CHECKING:
    import pyarrow as pa
    import torch
    from omegaconf import DictConfig

    from f2llm.data.batch import TrainBatch
    from f2llm.data.corpus import TrainingDataset
    from f2llm.data.datamodule import DataPlan
    from f2llm.model import Encoder

__all__ = ["CONFIGS", "compose_config", "compose_train"]  # f2llm.compose's, for tests

# The checkout these tests belong to (a copy's own when a test runs pytest in a copy), which
# the suite must leave clean; f2llm's configs come from the checkout f2llm is imported from.
ROOT = Path(__file__).resolve().parents[1]

LOCALES = Path("/usr/share/locale")
TEST_LANGUAGES = ["fr", "de", "ru", "es", "ja", "uk"]
TEST_TRAIN_CATALOGS = ["coreutils", "tar", "sed", "grep", "wget", "gzip", "diffutils", "bash",
                       "apt", "iso_3166-1", "iso_639-2"]
TEST_VAL_CATALOGS = ["gdk-pixbuf", "xdg-user-dirs", "at-spi2-core"]

TINY_SHAPE = {
    "model.shape.hidden_size": 32,
    "model.shape.num_hidden_layers": 1,
    "model.shape.num_attention_heads": 2,
    "model.shape.num_key_value_heads": 1,
    "model.shape.head_dim": 16,
    "model.shape.intermediate_size": 64,
}

# Published parameter counts of the F2LLM-v2 model configs (arXiv 2603.19223).
PUBLISHED = {
    "f2llm_80m": 80_084_288,
    "f2llm_160m": 159_185_024,
    "f2llm_330m": 334_349_184,
    "f2llm_0_6b": 596_049_920,
    "f2llm_1_7b": 1_720_574_976,
    "f2llm_4b": 4_022_468_096,
    "f2llm_8b": 7_568_405_504,
    "f2llm_14b": 13_990_394_880,
}


# The (format, language) each of the F2LLM-v2 example names (`EXAMPLE_NAMES`) must get, in a
# built corpus and in a run's data mix.
F2LLM_V2_EXAMPLES = {
    "amazon_polarity": ("classification", "mul"), "mela": ("classification", "mul"),
    "banking77": ("clustering", "mul"), "arxiv_clustering_p2p": ("clustering", "mul"),
    "msmarco": ("retrieval", "mul"), "webfaq_deu": ("retrieval", "de"),
    "miracl_ar": ("retrieval", "ar"), "mmarco_german": ("retrieval", "de"),
    "unpc_ar2en": ("retrieval", "ar"), "paracrawl_en-sw": ("retrieval", "en"),
    "xcodeeval_nl2code_Rust": ("retrieval", "code:rust"), "mqa_fi": ("retrieval", "fi"),
}


# --- Made once per test run, shared by the xdist workers ------------------------------------------

@pytest.fixture(autouse=True)
def _rank_zero_restored() -> Any:
    """Lightning's process-wide rank (`rank_zero_only.rank`) as it was before the test. A Trainer
    built in-process for another rank (as torchrun would start node 1's process) sets it, and
    every later test of that worker would log nothing: rank-zero-only loggers give a dummy."""
    rank_zero = sys.modules.get("lightning_utilities.core.rank_zero")
    before = getattr(getattr(rank_zero, "rank_zero_only", None), "rank", 0)
    yield
    rank_zero = sys.modules.get("lightning_utilities.core.rank_zero")
    if rank_zero is not None:
        rank_zero.rank_zero_only.rank = before


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every worker of this test run sees: under xdist each worker's base temp is
    `<base temp>/popen-gw<n>`, and that base temp is theirs in common."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def made_once(folder: Path, make: Callable[[Path], None]) -> Path:
    """`folder`, made by `make(folder)` once per test run: the first worker to ask makes it
    while the others wait on its lock, then every caller reads it. Readers must not change
    it (copy what they change: `shutil.copytree`)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock"):
        done = folder.with_name(f"{folder.name}.made")
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a failed attempt's leftovers
            make(folder)
            done.touch()
    return folder


def _link_locale(root: Path) -> None:
    for lang in TEST_LANGUAGES:
        for catalog in TEST_TRAIN_CATALOGS + TEST_VAL_CATALOGS:
            src = LOCALES / lang / "LC_MESSAGES" / f"{catalog}.mo"
            if src.exists():
                dst = root / lang / "LC_MESSAGES" / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(src)


@pytest.fixture(scope="session")
def locale_dir(shared_dir: Path) -> Path:
    """A locale tree with a few languages and catalogs (symlinks to the machine's .mo files),
    one for the test run: the gettext corpus built from it has one fingerprint everywhere."""
    if not LOCALES.exists():
        pytest.skip("no gettext catalogs on this machine")
    return made_once(shared_dir / "locale", _link_locale)


# --- Configs: the tests' corpus slice, tiny shape and few steps --------------------------------

SMALL_VALIDATION = {"val_min_pairs": 16, "val_max_pairs": 32}


def _values(values: dict[str, object]) -> list[str]:
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


def corpus_overrides(locale: Path) -> list[str]:
    """The tests' slice of the gettext catalogs: a few languages and held-out catalogs."""
    return _values({"data.corpus.locale_dir": locale,
                    "data.corpus.val_catalogs": "[" + ",".join(TEST_VAL_CATALOGS) + "]",
                    **{f"data.corpus.{k}": v for k, v in SMALL_VALIDATION.items()}})


def small_run(locale: Path, steps: int = 4, **extra: object) -> list[str]:
    """A command line's overrides for a run in seconds: the tests' corpus slice, the tiny
    shape, batch 8, `steps` steps validated every 2 (and `extra`). No `paths.*`: commands run
    as a user types them, in a repository copy."""
    return corpus_overrides(locale) + _values({
        "data.batch_size": 8, "trainer.max_steps": steps, "trainer.val_check_interval": 2,
        "trainer.enable_progress_bar": "false", **TINY_SHAPE, **extra})


def tiny_overrides(tmp: Path, locale: Path, **extra: object) -> list[str]:
    """`small_run` for a config composed in-process: paths under `tmp`, logged every step,
    checkpoints every 2 steps, no progress bar callback.

    Runs on the same slice share one corpus next to `locale` (built by the first run, which the
    others wait for: the source's build lock), unless `extra` changes the corpus options."""
    shared = {} if any(k.startswith("data.corpus.") for k in extra) else {
        "data.corpus.out_dir": locale.parent / f"{locale.name}_gettext"}
    return _values({"paths.data_dir": tmp / "data", "paths.output_dir": tmp / "run"}) + small_run(
        locale, **{"trainer.log_every_n_steps": 1, "callbacks.throughput.window": 2,
                   "callbacks.checkpoint.every_n_train_steps": 2, "callbacks.progress": None,
                   **shared, **extra})


@pytest.fixture()
def cfg_tiny(tmp_path: Path, locale_dir: Path) -> DictConfig:
    """The default config, shrunk to a CPU, tiny-model, few-step run."""
    return compose_train(tiny_overrides(tmp_path, locale_dir))


def model_config(name: str) -> DictConfig:
    """`configs/model/<name>.yaml` as Hydra composes it (the model files build on each other)."""
    return compose_train([f"model={name}"]).model


def load_script(name: str) -> ModuleType:
    """`scripts/<name>.py` as a module, with scripts/ on `sys.path` as `python scripts/<name>.py`
    has it (the scripts import their shared `_common`)."""
    folder = str(ROOT / "scripts")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- Models, batches and records for in-process tests ------------------------------------------

@functools.cache
def _bundled_tokenizer() -> Any:
    from f2llm.model import load_tokenizer

    return load_tokenizer(None)


def tiny_encoder(layers: int = 2, **kw: Any) -> Encoder:
    """The tests' tiny Qwen3 encoder: TINY_SHAPE with `layers` layers, the bundled Qwen3
    tokenizer, max_length 32, random init from seed 0 (so every call gives the same weights).

    The bundled tokenizer is loaded once per test process (about 0.9 s a load) and each encoder
    gets a shallow copy of it: its own Python settings (`padding_side`, which tests change), the
    Rust tokenizer shared (each call sets its padding and truncation). An encoder built from a
    folder (`pretrained=`, `tokenizer=`) loads that folder's, as `build_encoder` does."""
    from unittest import mock

    import torch

    from f2llm.model import build_encoder, encoder

    shape = {k.removeprefix("model.shape."): v for k, v in TINY_SHAPE.items()}
    shape.update(vocab_size=151_936, num_hidden_layers=layers)
    torch.manual_seed(0)
    load = encoder.load_tokenizer

    def bundled_once(name: Any, eos_token: str, trust_remote_code: bool = False) -> Any:
        if name is None and eos_token == encoder.DEFAULT_EOS:
            return copy.copy(_bundled_tokenizer())
        return load(name, eos_token, trust_remote_code)

    with mock.patch.object(encoder, "load_tokenizer", bundled_once):
        return build_encoder("tiny", shape=shape, **{"max_length": 32, **kw})


def copy_encoder(encoder: Encoder) -> Encoder:
    """A copy of `encoder` with weights of its own and `encoder`'s tokenizer (no test changes
    it; a deep copy of the Qwen3 tokenizer takes as long as loading it again)."""
    import copy

    return copy.deepcopy(encoder, memo={id(encoder.tokenizer): encoder.tokenizer})


def word_level_tokenizer(folder: Path) -> Path:
    """`folder` holding a tokenizer that is not Qwen3's: a three-word WordLevel vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    other = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "[UNK]": 1, "a": 2},
                                       unk_token="[UNK]"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=other, unk_token="[UNK]").save_pretrained(folder)
    return folder


WORDS = ["open", "file", "directory", "cannot", "read", "write", "permission", "denied",
         "archive", "compress", "invalid", "option", "missing", "operand", "pattern", "match",
         "line", "output", "input", "error", "warning"]
TOY_NEGATIVES = 3
TOY_RECORDS = 24


def _text(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(1, 12))))


def one_group_plan(table: pa.Table, dataset: TrainingDataset, instructions: bool,
                   num_negatives: dict[str, int]) -> DataPlan:
    """A `DataPlan` of one stage "s" over `dataset` (records `table`), all in one group
    "toy/xx" of language "xx"."""
    from f2llm.data.corpus import Corpus
    from f2llm.data.datamodule import DataPlan, Group, Stage

    rows = np.arange(table.num_rows)
    return DataPlan(corpus=Corpus(train=[dataset]),
                    stages={"s": Stage("s", (dataset.name,), instructions=instructions)},
                    datasets={dataset.name: dataset}, tables={dataset.name: table},
                    groups={"toy/xx": Group("toy/xx", dataset.name, "xx", rows)},
                    num_negatives=num_negatives, starts=(0, 1))


def collated_batches(encoder: Encoder, fmt: str, count: int, batch_size: int = 8,
                     max_tokens: int = 48) -> list[TrainBatch]:
    """Batches from the datamodule's collate path (TrainBatches) over an in-memory table.

    `max_tokens` is small so that every batch is packed into several chunks.
    """
    import pyarrow as pa

    from f2llm.data.corpus import TrainingDataset
    from f2llm.data.datamodule import TrainBatches
    from f2llm.model import TruncatingTokenizer

    rng = np.random.default_rng(0)
    columns = ["query", "passage", *(f"negative_{j + 1}" for j in range(TOY_NEGATIVES))]
    table = pa.table({c: [_text(rng) for _ in range(TOY_RECORDS)] for c in columns})
    dataset = TrainingDataset("toy", None, fmt, instruction="Find the matching text")
    plan = one_group_plan(table, dataset, instructions=True, num_negatives={
        "retrieval": TOY_NEGATIVES, "clustering": TOY_NEGATIVES, "classification": 1})
    items = TrainBatches(plan, TruncatingTokenizer(encoder.tokenizer, 512), encoder.format_query,
                         max_tokens)
    starts = [(i * batch_size) % (TOY_RECORDS - batch_size) for i in range(count)]
    return [items[{"group": "toy/xx", "indices": list(range(s, s + batch_size)), "stage": "s",
                   "epoch": 0, "position": i}] for i, s in enumerate(starts)]


def grads(encoder: Encoder) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in encoder.named_parameters()}


def texts(n: int, seed: int) -> list[str]:
    """`n` distinct short phrases of WORDS."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        out[" ".join(rng.choice(WORDS, size=int(rng.integers(2, 7))))] = None
    return list(out)


def toy_retrieval() -> tuple[list[str], list[str], dict[int, set[int]]]:
    """(queries, corpus, relevant corpus rows per query) of a small retrieval task."""
    corpus = texts(60, seed=0)
    rng = np.random.default_rng(1)
    queries, relevant = [], {}
    for q in range(20):
        size = int(rng.integers(1, 4))
        docs = {int(d) for d in rng.choice(len(corpus), size=size, replace=False)}
        # A query is a variant of its first relevant document, so some hits rank high and some
        # relevant documents rank far below the top 10.
        words = corpus[min(docs)].split()
        queries.append(" ".join([*words[1:], WORDS[q % len(WORDS)]]))
        relevant[q] = docs
    relevant[20] = set()  # no relevant document: left out on both sides
    queries.append("printer")
    return queries, corpus, relevant


def records(n: int, k: int, prefix: str = "") -> dict[str, list[str]]:
    """`n` retrieval records with `k` negatives, as columns."""
    cols = {"query": [f"{prefix}q{i}" for i in range(n)],
            "passage": [f"{prefix}p{i}" for i in range(n)]}
    cols.update({f"negative_{j}": [f"{prefix}n{i}.{j}" for i in range(n)] for j in range(1, k + 1)})
    return cols


def write_jsonl(path: Path, rows: list[dict | str | bytes]) -> Path:
    with path.open("wb") as fh:
        for row in rows:
            if isinstance(row, dict):
                row = json.dumps(row, ensure_ascii=False)
            fh.write((row.encode() if isinstance(row, str) else row) + b"\n")
    return path


def good(k: int = 7, **fields: object) -> dict:
    """A valid record with `k` negatives; `fields` replace values (`...` drops the field)."""
    row = {"query": "q", "passage": "p", **{f"negative_{j}": f"n{j}" for j in range(1, k + 1)}}
    row.update(fields)
    return {key: value for key, value in row.items() if value is not ...}


# --- The repository as a user has it, and the commands as a user types them ----------------------

# Not in a repository copy: what a fresh clone does not hold (run folders, data, caches).
_NOT_COPIED_AT_TOP = {".git", "logs", "data", "build", "dist"}
_NOT_COPIED = {"__pycache__", ".pytest_cache", ".ruff_cache"}


def copy_repository(dest: Path) -> Path:
    """A copy of this checkout's files at `dest`, as a fresh clone has them: empty `logs/`, no
    `data/`. Run the user's commands there (cwd=dest) and their runs land in `dest/logs/`."""
    def ignore(folder: str, names: list[str]) -> list[str]:
        top = Path(folder) == ROOT
        return [n for n in names if n in _NOT_COPIED or n.endswith(".egg-info")
                or (top and n in _NOT_COPIED_AT_TOP)]

    shutil.copytree(ROOT, dest, symlinks=True, ignore=ignore)
    (dest / "logs").mkdir()
    return dest


@pytest.fixture(scope="session")
def repo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One repository copy shared by a worker's subprocess tests."""
    return copy_repository(tmp_path_factory.mktemp("repo") / "f2llm")


def user_env(**extra: str) -> dict[str, str]:
    """This environment as a user's shell has it: offline, no project-root or Hydra overrides,
    no seed left by a run in this process (Lightning's `seed_everything` exports it), no
    pytest variable."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PROJECT_ROOT", "HYDRA_FULL_ERROR", "PL_GLOBAL_SEED", "PL_SEED_WORKERS",
                        "PYTEST_CURRENT_TEST"}}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra}


_WARM: list[WarmPython] = []  # this test process's warm interpreter, started on first use


def run_python(argv: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 600
               ) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=...)`
    for `[sys.executable, <script>.py, *args]`, without its 5 s of imports: the command runs in
    a fork of an interpreter that has imported the libraries once (tests/warm.py says what a
    fork keeps and when it falls back to a plain subprocess)."""
    if not _WARM:
        _WARM.append(WarmPython(user_env(), Path(tempfile.mkdtemp(prefix="f2llm-warm-"))))
    return _WARM[0].run([str(a) for a in argv], cwd, env, timeout)


def run_cli(repo: Path, script: str, *args: str, timeout: int = 600, **env: str
            ) -> subprocess.CompletedProcess[str]:
    """`python src/f2llm/<script>.py <args>` run from `repo`."""
    return run_python([sys.executable, f"src/f2llm/{script}.py", *args], repo, user_env(**env),
                      timeout)


def run_folders(repo: Path, pattern: str = "train/runs/*") -> list[Path]:
    """The copy's run folders under `logs/<pattern>` (e.g. "eval/runs/*", "*/*runs/*"),
    oldest first (Hydra names them by the time they started)."""
    return sorted((p for p in (repo / "logs").glob(pattern) if p.is_dir()),
                  key=lambda p: (p.name, str(p)))


def _train_default(repo: Path, locale: Path) -> None:
    copy_repository(repo)
    done = run_cli(repo, "train", *small_run(locale, **{
        "data.stages.0.steps": 2, "trainer.val_check_interval": 3}))
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="session")
def trained_once(shared_dir: Path, locale_dir: Path) -> Path:
    """The repository copy holding the one short run of the default that the test run trains
    (`trained_repo`), and the gettext corpus that run built under its data/. Read it only."""
    return made_once(shared_dir / "trained" / "f2llm", lambda repo: _train_default(
        repo, locale_dir))


@pytest.fixture(scope="module")
def trained_repo(trained_once: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository copy holding one short run of the default as a user runs it: 4 steps in two
    stages (a checkpoint at the switch, step 2, and `last.ckpt`), validated at step 3 and once
    more after fit (final_validate), so the last metrics come after fit.

    The run is trained once per test run; each test module gets its own copy of the repository
    (its runs and caches its own) whose `logs/train/runs/` links that run folder, so modules on
    two workers never start runs in one folder. Copy the run before changing it."""
    shared = trained_once
    repo = copy_repository(tmp_path_factory.mktemp("trained") / "f2llm")
    shutil.copytree(shared / "data", repo / "data")  # the corpus cache the first run built
    (repo / "logs" / "train" / "runs").mkdir(parents=True)
    for run in run_folders(shared):
        (repo / "logs" / "train" / "runs" / run.name).symlink_to(run, target_is_directory=True)
    return repo


# --- How the two xdist workers share the work ------------------------------------------------

# Kinds in the order their modules start: the long ones (documented commands, gloo runs, the
# scripts' toy runs) first, so that the short unit tests fill the end on both workers.
_KIND_ORDER = ("commands", "distributed", "scripts", "integration", "unit")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`make test` runs `--dist loadgroup --no-loadscope-reorder`: a test marked `xdist_group`
    (the documented commands, a group per page) goes with its group; every other test goes with
    its module, as `--dist loadfile` would send it, so a module's fixtures are made once."""
    for item in items:
        if not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))

    def kind(item: pytest.Item) -> tuple[int, bool]:
        parts = Path(item.nodeid.split("::")[0]).parts
        folder = parts[1] if len(parts) > 2 else ""
        page = any(str(m.args[0]).startswith("page:") for m in item.iter_markers("xdist_group"))
        return (_KIND_ORDER.index(folder) if folder in _KIND_ORDER else len(_KIND_ORDER),
                not page)  # the pages' commands first among the commands

    # Stable: a module's tests keep their order. xdist keeps this order of the groups with
    # `--no-loadscope-reorder` (it would otherwise start the groups with the most tests first).
    items.sort(key=kind)


# --- A suite that leaves the repository clean -------------------------------------------------

_SESSION_START = time.time()
_WATCHED = ("logs", "data")  # git-ignored: `git status` cannot show what a test left there


def files_written_since(start: float, root: Path = ROOT) -> list[Path]:
    """Files under `root`'s logs/ and data/ modified after `start` (older ones, e.g. a corpus
    cache built before the test run, are the user's)."""
    found = []
    for top in _WATCHED:
        for folder, _, names in os.walk(root / top):
            for name in names:
                path = Path(folder) / name
                with contextlib.suppress(FileNotFoundError):
                    if path.lstat().st_mtime >= start:
                        found.append(path)
    return sorted(found)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop this process's warm interpreter; fail the suite if a test wrote into the
    repository's logs/ or data/ (tests write under tmp paths; a user's `make train` running
    meanwhile would also be reported)."""
    for warm in _WARM:
        warm.close()
        shutil.rmtree(warm.scratch, ignore_errors=True)
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller checks
        return
    left = files_written_since(_SESSION_START)
    if not left:
        return
    shown = "\n".join(f"  {p.relative_to(ROOT)}" for p in left[:50])
    more = f"\n  ... and {len(left) - 50} more" if len(left) > 50 else ""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = (f"tests wrote {len(left)} file(s) into the repository's logs/ or data/ "
               f"(write under tmp_path instead):\n{shown}{more}")
    if reporter is not None:
        reporter.write_sep("=", "repository not left clean", red=True)
        reporter.write_line(message)
    else:
        print(message, file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
