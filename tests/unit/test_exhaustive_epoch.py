"""Exhaustive epochs: every training record exactly once per epoch, over all ranks.

Unit tests of the sampler, then a 2-process gloo run of the real datamodule under Lightning's
DDP that records which rows each rank trained on during one epoch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf, open_dict
from torch import nn

from f2llm.data import LanguageTemperatureSampler, StagedSampler
from tests.conftest import compose_train, tiny_overrides

WORLD = 2


def uneven_groups() -> dict[str, np.ndarray]:
    """Groups of sizes that leave every kind of remainder, with disjoint record ids."""
    sizes = {"fr": 403, "de": 200, "ja": 41, "xx": 5, "uk": 17}
    out, start = {}, 0
    for k, n in sizes.items():
        out[k] = np.arange(start, start + n)
        start += n
    return out


def epoch(samplers: list[LanguageTemperatureSampler]) -> list[list[dict[str, Any]]]:
    """One epoch of every rank's sampler, batch by batch: [position][rank]."""
    return [list(items) for items in zip(*samplers, strict=True)]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [16, 15])
def test_every_record_exactly_once_per_epoch(world: int, batch_size: int) -> None:
    g = uneven_groups()
    owner = {int(i): k for k, idx in g.items() for i in idx}
    samplers = [LanguageTemperatureSampler(g, batch_size, alpha=0.3, seed=5, rank=r,
                                           world_size=world, exhaustive=True)
                for r in range(world)]
    assert len(samplers[0]) == sum(-(-len(v) // batch_size) for v in g.values())
    for e in range(2):
        batches = epoch(samplers)
        assert len(batches) == len(samplers[0])
        used = []
        for shares in batches:
            assert len({s["group"] for s in shares}) == 1  # the same group on every rank
            group = shares[0]["group"]
            sizes = [len(s["indices"]) for s in shares]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
            indices = np.concatenate([s["indices"] for s in shares]).tolist()
            assert {owner[i] for i in indices} == {group}
            assert len(indices) <= batch_size
            used += indices
        assert sorted(used) == sorted(owner), f"epoch {e}"
    # A fresh shuffle per epoch: the second epoch is not the first one again.
    first, second = (LanguageTemperatureSampler(g, batch_size, seed=5, exhaustive=True)
                     for _ in range(2))
    second.set_epoch(1)
    assert [b["indices"].tolist() for b in first] != [b["indices"].tolist() for b in second]


def test_a_groups_batches_differ_by_at_most_one_record() -> None:
    # 41 records in batches of 16: 14 + 14 + 13, not 16 + 16 + 9.
    g = uneven_groups()
    sizes: dict[str, list[int]] = {}
    for item in LanguageTemperatureSampler(g, 16, seed=0, exhaustive=True):
        sizes.setdefault(item["group"], []).append(len(item["indices"]))
    assert sorted(sizes["ja"]) == [13, 14, 14]
    assert sorted(sizes["xx"]) == [5]
    assert all(max(s) - min(s) <= 1 for s in sizes.values())


def test_exhaustive_schedule_matches_the_batches_and_resumes() -> None:
    g = uneven_groups()
    # 7 batches more than one pass (47): the epoch runs into a second, freshly shuffled pass.
    kwargs = {"seed": 7, "rank": 1, "world_size": 2, "batches_per_epoch": 54, "stream": 1,
              "exhaustive": True}
    ref = LanguageTemperatureSampler(g, 15, **kwargs)
    assert ref.pass_length == 47
    uninterrupted = [(b["group"], b["indices"].tolist()) for _ in range(2) for b in ref]
    single = LanguageTemperatureSampler(g, 15, seed=7, batches_per_epoch=54, stream=1,
                                        exhaustive=True)
    for e in range(2):
        plan = single.schedule(e)
        for position in range(54):
            group, batch = single.global_batch(e, position)
            assert group == single.keys[plan[position]]
            share = np.array_split(batch, 2)[1].tolist()
            assert (group, share) == uninterrupted[54 * e + position]
    for stop in (1, 46, 47, 50):  # inside the first pass, at and after its end
        first = LanguageTemperatureSampler(g, 15, **kwargs)
        it = iter(first)
        head = [next(it) for _ in range(stop)]
        resumed = LanguageTemperatureSampler(g, 15, **kwargs)
        resumed.load_state_dict(first.state_dict())
        tail = list(resumed) + list(resumed)
        assert [(b["group"], b["indices"].tolist()) for b in head + tail] == uninterrupted


def test_staged_exhaustive_stages_each_use_every_record_once() -> None:
    g = uneven_groups()
    one = LanguageTemperatureSampler({"fr": g["fr"]}, 16, seed=2, exhaustive=True)
    two = LanguageTemperatureSampler(g, 16, seed=2, stream=1, exhaustive=True)
    items = list(StagedSampler([one, two], ["one", "two"]))
    for stage, groups in (("one", {"fr": g["fr"]}), ("two", g)):
        used = np.concatenate([i["indices"] for i in items if i["stage"] == stage])
        assert sorted(used.tolist()) == sorted(np.concatenate(list(groups.values())).tolist())


def test_groups_that_cannot_fill_every_rank_are_refused() -> None:
    g = uneven_groups()
    with pytest.raises(ValueError, match=r"xx \(5 records\)"):
        LanguageTemperatureSampler(g, 64, rank=0, world_size=8, exhaustive=True)
    # 17 records in batches of 8 on 4 ranks: 6 + 6 + 5, fine; on 6 ranks, 5 < 6.
    LanguageTemperatureSampler({"uk": g["uk"]}, 8, world_size=4, exhaustive=True)
    with pytest.raises(ValueError, match="uk"):
        LanguageTemperatureSampler({"uk": g["uk"]}, 8, world_size=6, exhaustive=True)


def test_temperature_sampling_is_the_default_and_repeats_small_groups() -> None:
    g = uneven_groups()
    sampler = LanguageTemperatureSampler(g, 16, alpha=0.3, seed=0)
    used = np.concatenate([b["indices"] for b in sampler])
    # Drawn with replacement, small groups lifted: records repeat and others are left out.
    assert len(np.unique(used)) < len(used)
    assert len(np.unique(used)) < sum(map(len, g.values()))


# ---- 2-process gloo run of the datamodule ----------------------------------------------------


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


@pytest.mark.slow
def test_ddp_epoch_trains_on_every_record_exactly_once(tmp_path: Path,
                                                       locale_dir: Path) -> None:
    # Two of the slice's languages keep the epoch (every record tokenized once) short.
    locale = tmp_path / "locale"
    for lang in ("fr", "ja"):
        if not (locale_dir / lang).exists():
            continue
        (locale / lang).mkdir(parents=True)
        (locale / lang / "LC_MESSAGES").symlink_to(locale_dir / lang / "LC_MESSAGES")
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

    out = tmp_path / "ranks"
    out.mkdir()
    mp.spawn(_epoch_worker, args=(str(out), data_cfg, model_cfg), nprocs=WORLD, join=True)
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
