"""Write the sentence-transformers export when training ends."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from f2llm.export import export_sentence_transformers
from f2llm.parallel import gathered_encoder

log = logging.getLogger(__name__)


class ExportOnFitEnd(L.Callback):
    """Exports at the end of fit. Prompts follow the last stage: with instructions, each of its
    datasets becomes a named prompt and the first retrieval dataset's is the "query" prompt."""

    def __init__(self, path: str | Path, query_instruction: str | None = None) -> None:
        self.path = Path(path)
        self.query_instruction = query_instruction

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A sharded (FSDP2) encoder is gathered on every rank; rank zero writes it.
        encoder = gathered_encoder(pl_module.encoder)
        if not trainer.is_global_zero:
            return
        query, tasks = self.query_instruction, {}
        dm = trainer.datamodule
        stages = getattr(dm, "stages", None)
        if stages:
            last = list(stages.values())[-1]
            if last.instructions:
                specs = [dm.datasets[name] for name in last.datasets]
                tasks = {d.name: d.instruction for d in specs if d.instruction}
                retrieval = [d.instruction for d in specs if d.format == "retrieval"]
                query = query or (retrieval[0] if retrieval else None)
        export_sentence_transformers(encoder, self.path, query,
                                     task_instructions=tasks)
        log.info("exported sentence-transformers model to %s", self.path)
