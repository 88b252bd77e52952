"""Train only the embedding rows of the tokens in the training data (`f2llm.model.vocab`)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import lightning as L
import torch

from f2llm.data.datamodule import F2LLMDataModule
from f2llm.model.vocab import TrimmedEmbedding, track_weight_decay, trim_input_embeddings
from f2llm.paths import private_tmp

log = logging.getLogger(__name__)


class TrimVocabulary(L.Callback):
    """Before the optimiser is built, replaces the encoder's input embedding by a
    `TrimmedEmbedding` that trains the rows of the tokens the training data contains; AdamW
    then updates those rows only. The model's values equal full-vocabulary training's
    (`f2llm.model.vocab` says why); checkpoints hold the trimmed layout (resume with the same
    setting); the export is the full vocabulary.

    Finding the tokens means tokenizing every distinct training text once; with `cache_dir`
    the ids are stored there under a key of the tokenizer, `max_length` and the stages' data
    files (path, size, modification time), so later runs on the same data skip it.
    """

    def __init__(self, enabled: bool = True, cache_dir: str | Path | None = None) -> None:
        self.enabled = enabled
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.trimmed: TrimmedEmbedding | None = None
        self._hook = None

    def _cache_key(self, dm: F2LLMDataModule) -> str:
        plan, tokenize = dm.plan, dm.tokenize
        parts: dict[str, object] = {
            "tokenizer": str(getattr(tokenize.tokenizer, "name_or_path", "")),
            "vocab": len(tokenize.tokenizer), "max_length": tokenize.max_length,
            "query_template": dm.encoder.query_template, "stages": []}
        for stage in plan.stages.values():
            for name in stage.datasets:
                spec = plan.datasets[name]
                path = Path(spec.path)
                stat = path.stat() if path.exists() else None
                parts["stages"].append([
                    name, str(path.resolve()), stat.st_size if stat else None,
                    stat.st_mtime_ns if stat else None, plan.instruction(name, stage.name),
                    plan.num_negatives[spec.format]])
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def _token_ids(self, dm: F2LLMDataModule) -> torch.Tensor:
        cache = None
        if self.cache_dir is not None:
            cache = self.cache_dir / f"token_ids-{self._cache_key(dm)}.pt"
            if cache.is_file():
                return torch.load(cache)
        start = time.perf_counter()
        ids = dm.training_token_ids()
        log.info("vocabulary trimming: %d token ids in the training data (%.0f s)",
                 ids.numel(), time.perf_counter() - start)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = private_tmp(cache)
            torch.save(ids, tmp)
            tmp.replace(cache)  # atomic: a concurrent run reads a whole file or none
        return ids

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.enabled or stage != "fit" or self.trimmed is not None:
            return
        from f2llm.callbacks.pruning import StructuredPruning

        if any(isinstance(cb, StructuredPruning) for cb in trainer.callbacks):
            # Pruning slices the embedding table in place; a trimmed one has no such table.
            raise ValueError("callbacks.vocab_trim cannot be combined with pruning: "
                             "set callbacks.vocab_trim.enabled=false")
        backbone = pl_module.encoder.backbone
        ids = self._token_ids(trainer.datamodule)
        self.trimmed = trim_input_embeddings(backbone, ids)
        log.info("training %d of %d embedding rows", ids.numel(), self.trimmed.num_embeddings)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.trimmed is not None and self._hook is None:
            self._hook = track_weight_decay(trainer.optimizers[0], self.trimmed)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
