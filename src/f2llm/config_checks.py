"""Settings checked before any work: each problem stops the run with one clear message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from f2llm.data.formats import FORMATS
from f2llm.data.sources import get_source
from f2llm.errors import UserError
from f2llm.model.encoder import HALF_ONLY_ATTENTION
from f2llm.model.hub import resolve_pretrained
from f2llm.objective.distillation import check_teacher_width
from f2llm.objective.matryoshka import check_matryoshka


class ConfigError(UserError, ValueError):
    """A setting that cannot work; the message names the setting and what to change."""


def _hidden_size(model_cfg: Any) -> int | None:
    """The model's width from its shape, or from a local pretrained folder's config.json."""
    shape = model_cfg.get("shape")
    if model_cfg.get("pretrained"):
        config = Path(str(model_cfg.pretrained)) / "config.json"
        if config.exists():
            return int(json.loads(config.read_text())["hidden_size"])
        return None  # a hub name: known once loaded
    if shape is not None:
        return int(shape.hidden_size)
    return None


def _teacher_width(teacher_cfg: Any) -> int | None:
    if not teacher_cfg or not teacher_cfg.get("path"):
        return None
    config = Path(str(teacher_cfg.path)) / "config.json"
    return int(json.loads(config.read_text())["hidden_size"]) if config.exists() else None


def check_config(cfg: DictConfig) -> None:
    """Raise `ConfigError` for settings that would fail later or silently do the wrong thing.

    The rules live with what they guard (formats, Matryoshka, distillation); this runs them on
    the config before anything is built."""
    hidden = _hidden_size(cfg.model)
    try:
        check_matryoshka(cfg.objective.get("mrl_dims"), cfg.objective.get("mrl_weights"),
                         hidden)
    except ValueError as e:
        raise ConfigError(f"objective.{e} (model={cfg.model.name})") from None

    data = cfg.data
    negatives = data.get("num_negatives") or {}
    unknown = sorted(set(negatives) - set(FORMATS))
    if unknown:
        raise ConfigError(f"data.num_negatives names unknown formats {unknown}; "
                          f"formats: {sorted(FORMATS)}")
    for name, k in negatives.items():
        try:
            FORMATS[name].check_batch_negatives(int(k))
        except ValueError as e:
            raise ConfigError(f"data.num_negatives.{e}") from None
    corpus = data.get("corpus") or {}
    if corpus.get("source") is not None:
        get_source(corpus.source)  # a name no source registered stops here, before the model
    stored = corpus.get("num_negatives")
    if hasattr(stored, "get"):  # a manifest corpus stores a count per format
        stored = stored.get("retrieval")
    if stored is not None and negatives.get("retrieval", 0) > stored:
        raise ConfigError(f"data.num_negatives.retrieval={negatives['retrieval']} but the corpus "
                          f"stores {stored} per record (data.corpus.num_negatives)")
    for key in ("locale_dir", "manifest"):
        path = corpus.get(key)
        if path is not None and not Path(str(path)).exists():
            raise ConfigError(f"data.corpus.{key}={path}: no such file or folder")
    if data.get("batch_size", 1) < 2:
        raise ConfigError("data.batch_size must be at least 2 (in-batch negatives)")

    teacher = cfg.get("teacher")
    if teacher and teacher.get("path"):
        # Before anything is built or downloaded: a teacher that cannot load fails now.
        resolve_pretrained(teacher.path, "teacher.path")
    guide = cfg.get("guide")
    if guide:
        if OmegaConf.is_missing(guide, "path") or guide.get("path") is None:
            raise ConfigError("guide=default needs guide.path=<folder>: an exported model with "
                              "the training tokenizer (docs/options.md, False negatives)")
        resolve_pretrained(guide.path, "guide.path")
    if cfg.model.get("pretrained"):
        resolve_pretrained(cfg.model.pretrained, "model.pretrained")
    if teacher:
        if teacher.get("path") and not Path(str(teacher.path)).exists() and str(
                teacher.path).startswith((".", "/", "~")):
            raise ConfigError(f"teacher.path={teacher.path}: no such folder")
        width = _teacher_width(teacher)
        if width is not None and hidden is not None:
            try:
                check_teacher_width(width, hidden)
            except ValueError as e:
                raise ConfigError(f"teacher.path={teacher.path}: {e}") from None
        if cfg.objective.get("kd_weight", 0) <= 0:
            raise ConfigError("a teacher is set but objective.kd_weight <= 0")

    trainer = cfg.trainer
    if (str(trainer.get("precision", "")).endswith("-mixed") and trainer.get("gradient_clip_val")
            and (cfg.get("optimizer") or {}).get("fused")):
        # Lightning's MixedPrecision.clip_gradients raises at the first step otherwise.
        raise ConfigError(
            f"optimizer.fused=true with trainer.gradient_clip_val={trainer.gradient_clip_val} "
            f"under trainer.precision={trainer.precision}: Lightning cannot clip the gradients "
            "of a fused optimizer under mixed precision. Use optimizer=adamw (torch picks the "
            "foreach kernel on GPUs), or trainer.gradient_clip_val=null")

    _check_strategy(cfg)

    steps = [s.get("steps") for s in (data.get("stages") or [])]
    max_steps = cfg.trainer.get("max_steps", -1)
    if steps and all(s is not None for s in steps) and max_steps not in (None, -1) and (
            max_steps > sum(steps)):
        raise ConfigError(f"trainer.max_steps={max_steps} is more than the stages' steps "
                          f"{steps} (sum {sum(steps)}): the run would start the stages over")


def _check_strategy(cfg: DictConfig) -> None:
    """What cannot combine with the trainer's strategy or precision."""
    trainer = cfg.trainer
    precision = str(trainer.get("precision", "32-true"))
    attention = cfg.model.get("attn_implementation")
    if attention in HALF_ONLY_ATTENTION and not precision.startswith(("bf16", "16")):
        raise ConfigError(
            f"model.attn_implementation={attention} with trainer.precision={precision}: "
            "flash-attention takes bf16/fp16 only. Use trainer.precision=bf16-mixed, or "
            "model.attn_implementation=sdpa (or auto, which picks sdpa at 32-bit)")
    if not sharded_strategy(trainer):
        return
    strategy = f"trainer.strategy={trainer.strategy._target_}"
    optimizer = str((cfg.get("optimizer") or {}).get("_target_", ""))
    if optimizer.startswith("bitsandbytes."):
        # bitsandbytes' 8-bit state is block-quantised per whole tensor: it knows neither the
        # DTensor shards of FSDP2 nor how to save or reshard that state per rank.
        raise ConfigError(
            f"optimizer={optimizer} with {strategy} (sharded): bitsandbytes' 8-bit optimisers "
            "cannot update sharded (DTensor) parameters. Use optimizer=adamw (sharding "
            "already divides its state by the number of GPUs), or trainer=ddp")
    callbacks = cfg.get("callbacks") or {}
    if callbacks.get("pruning"):
        raise ConfigError(
            f"callbacks.pruning with {strategy} (sharded): pruning slices whole weight "
            "matrices before training starts. Prune with trainer=gpu or trainer=ddp (the "
            "0.6B it starts from fits on one GPU), then train the pruned model sharded")


def sharded_strategy(trainer: Any) -> bool:
    """Whether the trainer config's strategy shards the model (`f2llm.parallel`'s FSDP2)."""
    strategy = trainer.get("strategy")
    target = strategy.get("_target_") if hasattr(strategy, "get") else None
    if not target:
        return False
    from hydra.utils import get_class

    from f2llm.parallel import FSDP2Strategy

    return issubclass(get_class(target), FSDP2Strategy)
