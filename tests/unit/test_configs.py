"""Every experiment file composes and instantiates its parts: data, objective, optimiser,
callbacks, and its model and teacher, with the published hub names served from a local hub
cache that holds small checkpoints the test makes (the real ones cannot load offline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from f2llm.config_checks import check_config
from f2llm.export import export_sentence_transformers
from tests.conftest import CONFIGS, compose_train, tiny_encoder, tiny_overrides

EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
# Every hub name an experiment names: the published 0.6B (prune -> distill) and the base Qwen3
# (the public-data recipe).
HUB_NAMES = ["codefuse-ai/F2LLM-v2-0.6B", "Qwen/Qwen3-0.6B"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment: str, tmp_path: Path,
                                              locale_dir: Path) -> None:
    overrides = tiny_overrides(tmp_path, locale_dir)
    if experiment.startswith("f2llm_v2"):  # the public data: a folder instead of gettext
        overrides = [o for o in overrides if not o.startswith("data.corpus.")]
        overrides.append(f"data.corpus.root={tmp_path}")
    cfg = compose_train([f"experiment={experiment}", *overrides])
    assert cfg.trainer.max_steps == 4
    instantiate(cfg.objective)
    instantiate(cfg.optimizer)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c]
    assert callbacks
    data = instantiate(cfg.data)
    assert data.batch_size > 0


def fake_hub_cache(root: Path, checkpoint: Path) -> Path:
    """A Hugging Face hub cache in which every name of HUB_NAMES is `checkpoint`."""
    for name in HUB_NAMES:
        repo = root / f"models--{name.replace('/', '--')}"
        revision = "0" * 40
        shutil.copytree(checkpoint, repo / "snapshots" / revision)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(revision)
    return root


def build(experiment: str, tmp: Path, locale: Path, local: Path, built: dict[str, dict]
          ) -> dict[str, Any]:
    """What `experiment`'s model and teacher are built as, at the shapes its configs give.

    `built` holds what each model and teacher config built so far: experiments that differ
    elsewhere (the pruning target, the stages) share one build of the same configs."""
    overrides = [o for o in tiny_overrides(tmp, locale) if ".shape." not in o]
    if experiment.startswith("f2llm_v2"):  # the public data: a folder instead of gettext
        overrides = [o for o in overrides if not o.startswith("data.corpus.")]
        overrides.append(f"data.corpus.root={tmp}")
    cfg = compose_train([f"experiment={experiment}", *overrides])
    with open_dict(cfg):
        if cfg.get("teacher") and not cfg.model.get("pretrained"):
            cfg.model.pretrained = str(local)  # the CPU recipe: the user's export, its teacher
        cfg.init_from = None
    check_config(cfg)
    key = json.dumps([OmegaConf.to_container(cfg[part], resolve=True) if cfg.get(part) else None
                      for part in ("model", "teacher")], sort_keys=True, default=str)
    if key not in built:
        model = instantiate(cfg.model)
        teacher = instantiate(cfg.teacher) if cfg.get("teacher") else None
        built[key] = {
            "pretrained": str(cfg.model.pretrained),
            "width": model.hidden_size,
            "teacher": None if teacher is None else str(cfg.teacher.path),
            "teacher_width": None if teacher is None else teacher.hidden_size,
            "weight_sum": float(model.backbone.embed_tokens.weight.double().sum()),
        }
    return built[key]


def test_every_experiment_builds_its_model_and_teacher(tmp_path: Path, locale_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    source = tiny_encoder()  # 32 wide
    checkpoint = export_sentence_transformers(source, tmp_path / "tiny")
    # What HF_HUB_CACHE sets (read once, when huggingface_hub is imported): every hub lookup,
    # transformers' included, reads this at call time.
    monkeypatch.setattr(constants, "HF_HUB_CACHE",
                        str(fake_hub_cache(tmp_path / "hub", checkpoint)))
    builds: dict[str, dict] = {}
    built = {e: build(e, tmp_path, locale_dir, checkpoint, builds) for e in EXPERIMENTS}
    expected = float(source.backbone.embed_tokens.weight.double().sum())
    for experiment, b in built.items():
        if b["pretrained"] in HUB_NAMES or b["pretrained"] == str(checkpoint):
            # The published name (or the user's folder) loaded the test's checkpoint weights.
            assert b["width"] == 32 and b["weight_sum"] == pytest.approx(expected), experiment
    kd = {e for e, b in built.items() if b["teacher"] is not None}
    assert kd == {e for e in EXPERIMENTS if e.startswith("prune_distill")}
    for experiment in kd:
        assert built[experiment]["teacher_width"] >= built[experiment]["width"]
    assert {built[e]["pretrained"] for e in kd} == {"codefuse-ai/F2LLM-v2-0.6B", str(checkpoint)}
    for experiment in ("f2llm_v2_stage1", "f2llm_v2_stage2"):  # from the base Qwen3
        assert built[experiment]["pretrained"] == "Qwen/Qwen3-0.6B", experiment
