"""The README is the test plan: every command in its ```bash blocks and every ```python snippet
runs as a user types it, from a copy of the repository (its runs land in the copy's logs/).

COMMANDS has one line per README command saying how it is run (`Run`, `Fails`, `NotRun`:
tests/commands/documented.py says what each promises and what may be added to a command). A
command the table does not know fails `test_readme_command`, so no command enters the README
untested; a table line whose command left the README fails
`test_every_table_line_is_in_the_readme`. The README's own files are written by `user_data`:
`my_data.yaml` from its YAML block, with small data files at the paths it names.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from f2llm.data.formats import get_format
from tests.commands.documented import (
    TRAIN,
    Fails,
    NotRun,
    Result,
    Run,
    Session,
    Table,
    check_command,
    fenced_blocks,
    page_commands,
    stale_lines,
)
from tests.conftest import ROOT, copy_repository

README = ROOT / "README.md"

# --- What a command may be given beyond what the README says ---------------------------------

TWO_STAGES = ("trainer.max_steps=2", "data.stages.0.steps=1", "data.stages.1.steps=1",
              "trainer.val_check_interval=2")
ONE_STAGE = ("trainer.max_steps=1", "data.stages.0.steps=1", "trainer.val_check_interval=1")
NO_STAGES = ("trainer.max_steps=1", "trainer.val_check_interval=1")  # data.stages=null
# Resume the first run (2 steps, two stages) and train one step more.
RESUMED = ("trainer.max_steps=3", "data.stages.0.steps=1", "data.stages.1.steps=2",
           "trainer.val_check_interval=3")


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
    (run,) = result.folders
    assert (run / "checkpoints" / "stage-stage1-end.ckpt").is_file()


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
T = TRAIN
E = "python src/f2llm/eval.py"
D = "python scripts/f2llm_v2_data.py"
M = "python src/f2llm/merge.py run=logs/train/runs/<time> last=3"
MERGE_RUN = (f"{T} trainer.max_steps=300 data.stages.0.steps=300 "
             "callbacks.checkpoint.save_top_k=-1 callbacks.checkpoint.every_n_train_steps=100")

# One line per README command, in the README's order. The key is the command as the README
# writes it (continuations joined, comment dropped, shell quotes removed); a ```python snippet is
# keyed by "python snippet: <its first line>".
COMMANDS: Table = {
    "make train": NotRun("installs packages, then runs the 1,600-step default (14 min); its "
                         "training step is `python src/f2llm/train.py`, run below"),
    "make test": NotRun("the suite this module is part of"),
    T: Run(TWO_STAGES, makes=TRAINED, check=stage_switch),
    f"{T} experiment=gettext_stage1": Run(ONE_STAGE, makes=TRAINED),
    f"{T} experiment=gettext_stage2 init_from=<run>/checkpoints/stage-stage1-end.ckpt":
        Run(ONE_STAGE, output=("initialised weights from",), makes=TRAINED),
    f"{T} trainer.max_steps=300 data.stages.0.steps=300 data.alpha=0.3": Run(TWO_STAGES,
                                                                             makes=TRAINED),
    # Both jobs train, validate and export (one run folder each).
    f"{T} -m optimizer.lr=5e-4,1e-3": Run(TWO_STAGES, makes=(
        "0/final_metrics.json", "0/export/modules.json", "1/final_metrics.json",
        "1/export/modules.json"), check=sweep_results(2)),
    f"{T} -m hparams_search=default_optuna hydra.sweeper.n_trials=2":
        Run(TWO_STAGES, output=("Best value:",), makes=("optimization_results.yaml",),
            check=optuna_results),
    f"{T} ckpt_path=logs/train/runs/<time>": Run(RESUMED, output=("resuming from",),
                                                  check=resumed),
    f"{T} optimizer=adamw8bit": Run(TWO_STAGES, makes=TRAINED),
    f"{T} module.gradcache=true": Run(TWO_STAGES, makes=TRAINED),
    f"{T} model.lora={{r: 16, lora_alpha: 32, target_modules: [q_proj, v_proj]}}":
        Run(TWO_STAGES, makes=TRAINED),
    f"{T} trainer=ddp_sim": Run(TWO_STAGES, makes=TRAINED),
    f"{T} trainer=gpu optimizer=adamw": (Run(TWO_STAGES, makes=TRAINED) if torch.cuda.is_available()
                         else Fails("No supported gpu backend found!")),
    f"{T} logger=many_loggers": Run(TWO_STAGES, makes=(*TRAINED, "tensorboard/events.*",
                                                       "csv/metrics.csv"), check=mlflow_store),
    f"{E} model_path=logs/train/runs/<time>/export": Run(makes=("eval_metrics.json",),
                                                         output=("bitext/accuracy",)),
    f"{E} model_path=logs/train/runs/<time>": Run(makes=("eval_metrics.json",)),
    f"{E} model_path=logs/train/runs/<time>/checkpoints/last.ckpt":
        Run(makes=("eval_metrics.json",)),
    "tensorboard --logdir logs/train": NotRun("a web server that runs until it is stopped"),
    f"{T} data=manifest data.corpus.manifest=my_data.yaml data.corpus.on_bad_record=skip "
    "model=f2llm_0_6b model.pretrained=Qwen/Qwen3-0.6B trainer=gpu optimizer=adamw":
        Fails(HUB_OFFLINE),
    f"{T} data=manifest data.corpus.manifest=my_data.yaml data.stages=null":
        Run(NO_STAGES, output=("train records: 96",),
            makes=("export/modules.json", "data_mix.json")),
    f"{T} experiment=prune_distill_80m model.pretrained=/models/F2LLM-v2-0.6B "
    "teacher.path=/models/F2LLM-v2-0.6B": Fails("/models/F2LLM-v2-0.6B: no such folder"),
    # The public F2LLM-v2 data: <f2llm_v2_folder> is a synthetic copy this module makes
    # (`synthetic_folder`), <stage1_run> the first command's run, <synthetic_folder> a new path.
    f"{D} download --root <f2llm_v2_folder> --datasets msmarco webfaq_deu mmarco_german":
        Fails("no network here"),
    f"{D} table data.corpus.root=<f2llm_v2_folder> data.alpha=0.3": Run(output=("msmarco",)),
    f"{T} experiment=f2llm_v2_stage1 data.corpus.root=<f2llm_v2_folder>": Fails(HUB_OFFLINE),
    f"{T} experiment=f2llm_v2_stage2 data.corpus.root=<f2llm_v2_folder> "
    "init_from=<stage1_run>/checkpoints/stage-stage1-end.ckpt": Fails(HUB_OFFLINE),
    f"{T} experiment=prune_distill_80m data=f2llm_v2 data.corpus.root=<f2llm_v2_folder> "
    "model.pretrained=/models/F2LLM-v2-0.6B teacher.path=/models/F2LLM-v2-0.6B":
        Fails("/models/F2LLM-v2-0.6B: no such folder"),
    f"{D} synthetic --root <synthetic_folder> --layout raw": Run(),
    f"{D} table data.corpus.root=<synthetic_folder>": Run(output=("msmarco",)),
    f"{T} experiment=f2llm_v2_stage2 data.corpus.root=<synthetic_folder> model=tiny trainer=cpu "
    "trainer.max_steps=20 data.batch_size=16": Run(("trainer.max_steps=2",),
                                                   makes=("export/modules.json",
                                                          "data_mix.json")),
    f"{T} experiment=prune_distill_160m": Fails(HUB_OFFLINE),
    f"{T} experiment=prune_distill_330m": Fails(HUB_OFFLINE),
    f"{T} experiment=prune_distill_tiny model.pretrained=logs/train/runs/<time>/export":
        Run(ONE_STAGE, makes=TRAINED, check=pruned),
    f"{E} model_path=all-MiniLM-L6-v2": Run(makes=("eval_metrics.json",)),
    # Checkpoint merging: the merges read the run of the line before them, which keeps a
    # checkpoint at every step here (3 steps: 3 checkpoints to merge).
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
    # README's YAML block.
    f"{T.replace('train', 'mine')} model_path=logs/train/runs/<time>/export "
    "input=my_pairs.parquet language=en out=data/mined/mined.parquet num_negatives=7 "
    "range_min=2 relative_margin=0.05": Run(),
    f"{T} data=manifest data.corpus.manifest=data/mined/mined.yaml data.stages=null "
    "data.num_negatives.retrieval=7 final_validate=false":
        Run(NO_STAGES, makes=("export/modules.json", "data_mix.json")),
    f"{T} model.attention=bidirectional model.pooling=mean": Run(TWO_STAGES, makes=TRAINED),
    f"{T} module.embedding_lr_scale=4": Run(TWO_STAGES, makes=TRAINED),
    f"{T} objective.mask_same_text=true objective.false_negative_margin=0.1":
        Run(TWO_STAGES, makes=TRAINED),
    f"{T} guide=default guide.path=logs/train/runs/<time>/export":
        Run(TWO_STAGES, makes=TRAINED),
    f"{T} model.shape.num_hidden_layers=4 objective.layers=[1,2]": Run(TWO_STAGES, makes=TRAINED),
    "torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:29500 "
    "src/f2llm/train.py trainer=ddp_multinode_sim hydra.run.dir=logs/train/runs/two_nodes":
        NotRun("two nodes run it at once: tests/distributed/test_launch.py runs it twice, "
               "kills and resumes"),
    "python snippet: import mteb": Fails("Couldn't reach 'mteb/sts22-crosslingual-sts' on the "
                                         "Hub"),
    "python snippet: from sentence_transformers import SentenceTransformer": Run(),
}


# --- The files the README tells a user to bring --------------------------------------------


def user_data(repo: Path) -> None:
    """`my_data.yaml` from the README's YAML block, and a small dataset at each path it names,
    in the format it declares (the stored negatives a record of that format needs); the mining
    example's pairs (`my_pairs.parquet`) and its manifest (from its YAML block)."""
    (mined,) = [b for b in fenced_blocks(README, "yaml") if b.startswith("# data/mined/mined.yaml")]
    (repo / "data/mined").mkdir(parents=True)
    (repo / "data/mined/mined.yaml").write_text(mined)
    words = ["file", "folder", "printer", "network", "window", "archive", "password", "disk"]
    pairs = [(f"how do I {verb} the {noun}", f"To {verb} the {noun}, open the menu.")
             for verb in ("open", "remove", "copy", "rename", "share", "find") for noun in words]
    pq.write_table(pa.table({"query": [q for q, _ in pairs], "passage": [p for _, p in pairs]}),
                   repo / "my_pairs.parquet")
    (block,) = [b for b in fenced_blocks(README, "yaml") if b.startswith("# my_data.yaml")]
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


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory, locale_dir: Path):
    repo = copy_repository(tmp_path_factory.mktemp("readme") / "f2llm")
    s = Session(README, COMMANDS, repo, locale_dir, tmp_path_factory.mktemp("snippets"),
                prepare=user_data)
    yield s
    summary = s.summary()
    (tmp_path_factory.getbasetemp() / "readme_commands.md").write_text(summary + "\n")
    print("\nREADME commands:\n" + summary)
    shutil.rmtree(repo, ignore_errors=True)


# --- The tests -------------------------------------------------------------------------------


def test_every_table_line_is_in_the_readme() -> None:
    stale = stale_lines(README, COMMANDS)
    assert not stale, f"COMMANDS lines for commands the README no longer has: {stale}"


def test_not_run_commands_are_few() -> None:
    skipped = [key for key, how in COMMANDS.items() if isinstance(how, NotRun)]
    assert len(skipped) <= 4, skipped


@pytest.mark.parametrize("key, command", [pytest.param(k, c, id=k[:100])
                                          for k, c in page_commands(README)])
def test_readme_command(session: Session, key: str, command: list[str] | str) -> None:
    check_command(session, key, command, "tests/commands/test_readme.py")
