"""Write the sentence-transformers export when training ends."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from f2llm.export import export_sentence_transformers

log = logging.getLogger(__name__)


class ExportOnFitEnd(L.Callback):
    def __init__(self, path: str | Path, query_instruction: str | None = None) -> None:
        self.path = Path(path)
        self.query_instruction = query_instruction

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            export_sentence_transformers(pl_module.encoder, self.path, self.query_instruction)
            log.info("exported sentence-transformers model to %s", self.path)
