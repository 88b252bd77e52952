"""The realised data mix: batches per format and per language, logged and summarised."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


def mix_shares(realised: dict[tuple[str, str, str, str], int], field: int) -> dict[str, float]:
    """Share of batches per value of one key field (0 stage, 1 dataset, 2 format, 3 language)."""
    counts: Counter[str] = Counter()
    for key, n in realised.items():
        counts[key[field]] += n
    total = sum(counts.values()) or 1
    return {k: v / total for k, v in sorted(counts.items())}


class DataMixLogger(L.Callback):
    """Every `every_n_steps`, logs `mix/format/<f>` and `mix/language/<l>` (share of batches so
    far); at the end of fit writes `<output_dir>/data_mix.json` and logs a summary."""

    def __init__(self, output_dir: str | Path | None = None, every_n_steps: int = 100) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        realised = trainer.datamodule.realised
        if not realised:
            return
        shares = {f"mix/format/{k}": v for k, v in mix_shares(realised, 2).items()}
        shares |= {f"mix/language/{k}": v for k, v in mix_shares(realised, 3).items()}
        pl_module.log_dict(shares, batch_size=1)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        report = trainer.datamodule.plan.corpus.skip_report
        if report is not None and trainer.is_global_zero:
            if report.skipped:
                log.warning("skipped %d bad records while reading the data:\n%s",
                            report.skipped, report.summary())
            if self.output_dir is not None:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                (self.output_dir / "skip_report.json").write_text(
                    json.dumps(report.to_dict(), indent=2))
        realised = trainer.datamodule.realised
        if not realised or not trainer.is_global_zero:
            return
        summary = {
            "batches": sum(realised.values()),
            "by_stage": mix_shares(realised, 0),
            "by_dataset": mix_shares(realised, 1),
            "by_format": mix_shares(realised, 2),
            "by_language": mix_shares(realised, 3),
            "batches_by_stage_dataset_format_language": [[*k, v] for k, v in
                                                         sorted(realised.items())],
        }
        by_language = summary["by_language"]
        top = sorted(by_language.items(), key=lambda kv: -kv[1])
        log.info("data mix: %d batches; formats %s; %d languages, most drawn %s, least %s",
                 summary["batches"], {k: round(v, 3) for k, v in summary["by_format"].items()},
                 len(by_language), [(k, round(v, 4)) for k, v in top[:5]],
                 [(k, round(v, 4)) for k, v in top[-5:]])
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "data_mix.json").write_text(json.dumps(summary, indent=2))
