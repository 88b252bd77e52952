"""Exhaustive epochs: every training record exactly once per epoch, over all ranks.

The sampler's promises; a 2-process gloo run of the real datamodule under Lightning's DDP that
records which rows each rank trained on is tests/distributed/test_exhaustive_epoch.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from f2llm.data import LanguageTemperatureSampler, StagedSampler


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


