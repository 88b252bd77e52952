"""Exhaustive epochs under DDP: a 2-process gloo run of the real datamodule under Lightning's
DDP records which rows each rank trained on during one epoch: every training record exactly
once over all ranks (the sampler alone: tests/unit/test_exhaustive_epoch.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf, open_dict
from torch import nn

from tests.conftest import TEST_VAL_CATALOGS, compose_train, tiny_overrides
from tests.distributed.ranks import start_ranks

WORLD = 2


class IndexRecorder(L.LightningModule):
    """Trains nothing; keeps what each training batch carried."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen: list[dict[str, Any]] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.seen.append({"dataset": batch.dataset, "group": batch.group,
                          "position": batch.position, "batch_size": batch.batch_size,
                          "indices": batch.indices.tolist()})
        return self.weight.sum() * 0  # DDP needs a backward that reaches every parameter

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _epoch_worker(rank: int, out: str, data_cfg: dict, model_cfg: dict) -> None:
    torch.set_num_threads(1)  # two processes share the machine's cores
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="0", WORLD_SIZE=str(WORLD),
                      NODE_RANK="0", LOCAL_RANK=str(rank), RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank,
                            world_size=WORLD)
    datamodule = instantiate(data_cfg, encoder=instantiate(model_cfg))
    recorder = IndexRecorder()
    # The configured trainer's data settings (use_distributed_sampler=False) on 2 gloo ranks.
    trainer = L.Trainer(accelerator="cpu", devices=WORLD,
                        strategy=DDPStrategy(process_group_backend="gloo"), max_epochs=1,
                        use_distributed_sampler=False, limit_val_batches=0,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(recorder, datamodule=datamodule)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(recorder.seen))
    # Both ranks past their last collective before either tears gloo down (a
    # rank leaving early once aborted its peer: 'terminate called without an
    # active exception').
    dist.barrier()
    dist.destroy_process_group()


def test_ddp_epoch_trains_on_every_record_exactly_once(tmp_path: Path,
                                                       locale_dir: Path) -> None:
    # Two of the slice's languages and half its messages keep the epoch (every record tokenized
    # once) short: the catalogs of both name lists (classification), the four smallest
    # components that clustering draws from (it needs four) and the held-out ones.
    locale = tmp_path / "locale"
    for lang in ("fr", "ja"):
        for catalog in ["iso_3166-1", "iso_639-2", "apt", "tar", "bash", "wget",
                        *TEST_VAL_CATALOGS]:
            found = locale_dir / lang / "LC_MESSAGES" / f"{catalog}.mo"
            if found.exists():
                (locale / lang / "LC_MESSAGES").mkdir(parents=True, exist_ok=True)
                (locale / lang / "LC_MESSAGES" / found.name).symlink_to(found)
    # An odd global batch: every batch is split over the ranks in shares one record apart.
    cfg = compose_train(tiny_overrides(tmp_path, locale, **{
        "data.exhaustive": "true", "data.batch_size": 129}))
    with open_dict(cfg):
        # One stage over every dataset, one pass: the epoch.
        cfg.data.stages = [{"name": "all", "datasets": ["gettext_bitext", "gettext_domains",
                                                        "gettext_names"],
                            "instructions": True, "steps": None}]
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    # The corpus is built here once; the ranks find it cached.
    reference = instantiate(data_cfg)
    reference.prepare_data()
    reference.setup()
    rows = {name: t.num_rows for name, t in reference.plan.tables.items()}
    assert set(rows) == {"gettext_bitext", "gettext_domains", "gettext_names"}
    assert all(rows.values()), rows  # each dataset has records in the epoch

    out = tmp_path / "ranks"
    out.mkdir()
    start_ranks(_epoch_worker, (str(out), data_cfg, model_cfg), WORLD)
    seen = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]

    assert len(seen[0]) == len(seen[1]) == len(reference.sampler)
    used: list[tuple[str, int]] = []
    for a, b in zip(*seen, strict=True):
        assert (a["group"], a["position"]) == (b["group"], b["position"])
        assert a["batch_size"] == len(a["indices"]) and b["batch_size"] == len(b["indices"])
        assert 0 <= a["batch_size"] - b["batch_size"] <= 1
        batch = a["indices"] + b["indices"]
        # Every batch is one group: its rows are the group's.
        group_rows = set(reference.sampler.samplers[0].groups[
            reference.sampler.samplers[0].keys.index(a["group"])].tolist())
        assert set(batch) <= group_rows
        used += [(a["dataset"], i) for i in batch]
    assert len(used) == len(set(used)) == sum(rows.values())
    assert set(used) == {(name, i) for name, n in rows.items() for i in range(n)}
    assert [s["position"] for s in seen[0]] == list(range(len(reference.sampler)))
