"""Write the sentence-transformers export when training ends, and its model card once the
run's final metrics exist."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from f2llm.export import export_sentence_transformers
from f2llm.model_card import write_model_card
from f2llm.parallel import gathered_encoder

log = logging.getLogger(__name__)


class ExportOnFitEnd(L.Callback):
    """Exports at the end of fit. Prompts follow the last stage: with instructions, each of its
    datasets becomes a named prompt and the first retrieval dataset's is the "query" prompt.

    The weights are final at the end of fit, the held-out metrics are not (`train()` may
    validate once more): `train()` calls `write_card` after writing `final_metrics.json`."""

    def __init__(self, path: str | Path, query_instruction: str | None = None,
                 license: str = "apache-2.0") -> None:
        self.path = Path(path)
        self.query_instruction = query_instruction
        self.license = license
        self.exported = False

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A sharded (FSDP2) encoder is gathered on every rank; rank zero writes it.
        encoder = gathered_encoder(pl_module.encoder)
        if not trainer.is_global_zero:
            return
        query, tasks = self.query_instruction, {}
        plan = trainer.datamodule.plan
        last = list(plan.stages.values())[-1]
        if last.instructions:
            specs = [plan.datasets[name] for name in last.datasets]
            tasks = {d.name: d.instruction for d in specs if d.instruction}
            retrieval = [d.instruction for d in specs if d.format == "retrieval"]
            query = query or (retrieval[0] if retrieval else None)
        export_sentence_transformers(encoder, self.path, query,
                                     task_instructions=tasks)
        self.exported = True
        log.info("exported sentence-transformers model to %s", self.path)

    def write_card(self, trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, float]) -> None:
        """README.md in the export: the card with the run's final metrics (`f2llm.model_card`)."""
        # Under a spawned launcher (`trainer=ddp_sim`) the export and the trainer's step are the
        # spawned processes': this process reads the export from disk and the steps from
        # `metrics` (`train/step`, `val/step`).
        if not (trainer.is_global_zero and (self.exported or self.path.joinpath("modules.json")
                                            .is_file())):
            return
        step = metrics.get("train/step", trainer.global_step)
        evaluated = metrics.get("val/step")
        card = write_model_card(self.path, cfg.paths.output_dir, cfg, metrics, int(step),
                                trainer.world_size, self.license,
                                None if evaluated is None else int(evaluated))
        log.info("wrote the model card %s", card)
