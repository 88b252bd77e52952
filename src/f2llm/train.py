"""Train an embedding model: `python src/f2llm/train.py [experiment=<name>] [overrides]`."""

from __future__ import annotations

from f2llm.bootstrap import (  # first: sys.path and the project root
    CONFIG_DIR,
    exit_without_final_collection,
)

import ctypes
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from f2llm.errors import NotFound, one_message
from f2llm.launch import multirun_job_ranks

if TYPE_CHECKING:
    import lightning as L

    from f2llm.module import F2LLMModule

# torch, transformers, Lightning and what builds on them are imported by the functions that use
# them: `--help`, `--cfg job` and a mistake Hydra finds in the command line are answered without
# them (about 0.5 s, not 6), and a mistake in the config or in the checkpoints it names is
# reported before Lightning, the module, the callbacks and the loggers are imported.

log = logging.getLogger("f2llm.train")


def build(cfg: DictConfig, callbacks: Sequence[L.Callback] = ()
          ) -> tuple[F2LLMModule, L.LightningDataModule, L.Trainer]:
    """Instantiate encoder, datamodule, module, callbacks, loggers and trainer from `cfg`;
    `callbacks` are added to the configured ones (how benchmarks time steps)."""
    from lightning.pytorch.callbacks import ProgressBar

    from f2llm.checkpoint_io import FileCheckpointIO
    from f2llm.loggers import build_loggers

    precision = cfg.trainer.get("precision")
    empty = builds_empty(cfg)
    # The trainer's precision decides what `attn_implementation: auto` may pick.
    encoder = instantiate(cfg.model, precision=precision, empty_init=empty)
    datamodule = instantiate(cfg.data, encoder=encoder)  # batches follow its tokenizer
    gradcache = bool(cfg.module.get("gradcache", False))
    frozen = {"precision": precision}  # teacher and guide: weights in the training precision
    module = instantiate(cfg.module)(
        encoder=encoder,
        objective=instantiate(cfg.objective),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        # Under GradCache (manual optimisation) the module clips; Lightning refuses to.
        gradient_clip_val=cfg.trainer.get("gradient_clip_val") if gradcache else None,
        teacher=instantiate(cfg.teacher, **frozen) if cfg.get("teacher") else None,
        guide=instantiate(cfg.guide, **frozen) if cfg.get("guide") else None,
        # An empty (meta) model takes its init_from weights once sharded; a built one now.
        init_from=cfg.get("init_from") if empty else None,
    )
    callbacks = [*(instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c),
                 *callbacks]
    if not cfg.trainer.get("enable_progress_bar", True):
        # `trainer.enable_progress_bar=false` alone turns the bar off (Lightning would refuse
        # the configured bar callback).
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = build_loggers(cfg.get("logger"))
    extra = {"gradient_clip_val": None} if gradcache else {}
    if "plugins" not in cfg.trainer:  # checkpoints without a copy in memory (a config's own win)
        extra["plugins"] = [FileCheckpointIO()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **extra)
    return module, datamodule, trainer


def builds_empty(cfg: DictConfig) -> bool:
    """Whether the model is built on the meta device and filled rank by rank once sharded
    (`f2llm.model.weights`): under the sharded strategy, unless something needs the whole
    weights before sharding (LoRA adapters, the vocabulary trimming callback)."""
    from f2llm.config_checks import sharded_strategy

    if not sharded_strategy(cfg.trainer) or cfg.model.get("lora"):
        return False
    trim = (cfg.get("callbacks") or {}).get("vocab_trim")
    return not (trim and trim.get("enabled", True))


def resolve_ckpt_path(ckpt_path: str | None) -> str | None:
    """A checkpoint file, or a run folder (resume from its newest checkpoint that loads, with a
    warning naming each damaged newer one), or one of Lightning's keywords."""
    from f2llm.checkpoints import is_sharded_checkpoint, newest_loadable, read_checkpoint

    if not ckpt_path or ckpt_path in {"last", "hpc", "best", "registry"}:
        return ckpt_path  # Lightning's own keywords
    path = Path(ckpt_path)
    if path.is_dir() and not is_sharded_checkpoint(path):
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = newest_loadable(folder)
        log.info("resuming from %s", found)
        return str(found)
    if is_sharded_checkpoint(path):
        return str(path)  # Lightning reads the shards
    if not path.is_file():
        raise NotFound(f"ckpt_path={ckpt_path}: no such checkpoint file or run folder")
    read_checkpoint(path, "ckpt_path", mmap=True)  # a damaged file: one message naming it
    return str(path)


def keep_freed_host_memory() -> bool:
    """Have glibc keep freed host memory for reuse instead of unmapping it.

    glibc serves blocks over 32 MiB by mmap and unmaps them on free, so a tensor that size
    made every step (the token-embedding gradient: vocabulary x hidden) page-faults all its
    memory in again each time. Kept, the CPU default's steps take 0.95x as long
    (`scripts/bench_ab.py`, docs/benchmarks.md); the process's RSS stays at its high-water mark.
    False where the C library is not glibc (nothing changes)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, 1 << 31))


def train(cfg: DictConfig, callbacks: Sequence[L.Callback] = ()) -> dict[str, float]:
    from f2llm.checkpoints import (
        check_loadable,
        is_sharded_checkpoint,
        load_weights,
        read_checkpoint,
    )
    from f2llm.config_checks import check_config

    check_config(cfg)
    # Checkpoints named by the config are checked before any work: a bad path stops now.
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"))
    if cfg.get("init_from"):
        check_loadable(cfg.init_from, "init_from")
    import lightning as L

    from f2llm.callbacks.export import ExportOnFitEnd
    from f2llm.loggers import log_config, runs_ended

    if cfg.get("keep_freed_host_memory") and keep_freed_host_memory():
        log.debug("glibc keeps freed host memory for reuse (keep_freed_host_memory)")
    L.seed_everything(cfg.seed, workers=True)
    module, datamodule, trainer = build(cfg, callbacks)
    if cfg.get("init_from") and module.init_from is None:
        # Before fit: the callbacks' setup (vocabulary trimming, pruning) reads the weights.
        load_weights(module, cfg.init_from)
    if ckpt_path and is_sharded_checkpoint(Path(ckpt_path)):
        # A sharded folder restores the optimiser before any hook: check its metadata now.
        module.check_resume(read_checkpoint(Path(ckpt_path) / "meta.pt", "ckpt_path"))
    log_config(trainer.loggers, cfg)
    with runs_ended(trainer.loggers):
        # weights_only: a checkpoint is data, never code to run (tensors and plain containers).
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        # The metrics fit hands back: from this process, or from rank zero of the processes a
        # spawned launcher started (`trainer=ddp_sim`), whose trainer state stays there.
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        end = metrics.get("train/step")  # the step fit ended at (None: it took none)
        evaluated_now = end is not None and metrics.get("val/step") == end
        if cfg.get("final_validate") and not evaluated_now:
            # The validation loop again (MatryoshkaEval evaluates in it): it places the model on
            # its devices and runs on every rank, as during fit. None without held-out sets.
            for results in trainer.validate(module, datamodule):
                metrics.update({k: float(v) for k, v in results.items()})
            if end is not None and "val/step" in metrics:
                metrics["val/step"] = end  # the final weights (spawned processes count from 0)
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir)
        (out / "final_metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        for cb in trainer.callbacks:
            if isinstance(cb, ExportOnFitEnd):
                cb.write_card(trainer, cfg, metrics)  # the card states the final metrics
        dims = sorted((int(k.split("@")[1]), v) for k, v in metrics.items()
                      if k.startswith("val/bitext/accuracy@"))
        if dims:
            log.info("held-out bitext accuracy by dim: %s",
                     ", ".join(f"{d}: {v:.4f}" for d, v in dims))
        log.info("run folder: %s", out)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    # one_message: a UserError is one message on stderr, exit status 1.
    with one_message(), multirun_job_ranks():
        metrics = train(cfg)
    # Hydra sweepers optimise the returned value.
    return metrics.get(cfg.get("optimized_metric", "val/bitext/accuracy"))


if __name__ == "__main__":
    exit_without_final_collection()
    main()
