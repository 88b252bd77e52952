"""Per-group batches, temperature sampling, rank sharding, resume; length packing."""

from __future__ import annotations

import numpy as np
import torch

from f2llm.data import (
    LanguageTemperatureSampler,
    StagedSampler,
    pack_by_length,
    temperature_probs,
)


def groups() -> dict[str, np.ndarray]:
    sizes = {"fr": 400, "de": 200, "ja": 40, "xx": 5}
    out, start = {}, 0
    for k, n in sizes.items():
        out[k] = np.arange(start, start + n)
        start += n
    return out


def test_temperature_probs() -> None:
    p1 = temperature_probs([100, 1], 1.0)
    p0 = temperature_probs([100, 1], 0.0)
    assert np.allclose(p1, [100 / 101, 1 / 101]) and np.allclose(p0, [0.5, 0.5])


def test_batches_come_from_one_group_without_repeats() -> None:
    g = groups()
    owner = {int(i): k for k, idx in g.items() for i in idx}
    sampler = LanguageTemperatureSampler(g, batch_size=16, alpha=0.5, seed=1)
    for item in sampler:
        idx = item["indices"].tolist()
        assert {owner[i] for i in idx} == {item["group"]}
        assert len(set(idx)) == len(idx)
        assert len(idx) == min(16, len(g[item["group"]]))


def test_ranks_split_the_same_global_batch() -> None:
    g = {k: v for k, v in groups().items() if len(v) >= 16}  # small groups round to the ranks
    s0 = LanguageTemperatureSampler(g, 16, alpha=0.5, seed=3, rank=0, world_size=2)
    s1 = LanguageTemperatureSampler(g, 16, alpha=0.5, seed=3, rank=1, world_size=2)
    single = LanguageTemperatureSampler(g, 16, alpha=0.5, seed=3)
    for a, b, full in zip(s0, s1, single, strict=True):
        assert a["group"] == b["group"] == full["group"]
        assert np.array_equal(np.concatenate([a["indices"], b["indices"]]), full["indices"])


def test_resume_continues_the_same_sequence() -> None:
    g = groups()
    full = [item["indices"].tolist() for _ in range(2)
            for item in LanguageTemperatureSampler(g, 16, 0.5, seed=7)]
    ref = LanguageTemperatureSampler(g, 16, 0.5, seed=7)
    uninterrupted = [b["indices"].tolist() for b in ref] + [b["indices"].tolist() for b in ref]
    first = LanguageTemperatureSampler(g, 16, 0.5, seed=7)
    it = iter(first)
    head = [next(it)["indices"].tolist() for _ in range(5)]
    resumed = LanguageTemperatureSampler(g, 16, 0.5, seed=7)
    resumed.load_state_dict(first.state_dict())
    tail = [b["indices"].tolist() for b in resumed] + [b["indices"].tolist() for b in resumed]
    assert head + tail == uninterrupted
    assert full[: len(uninterrupted) // 2] == uninterrupted[: len(uninterrupted) // 2]


def test_low_alpha_lifts_small_groups() -> None:
    g = groups()
    def share(alpha: float) -> float:
        s = LanguageTemperatureSampler(g, 4, alpha, seed=0, batches_per_epoch=4000)
        plan = s.schedule(0)
        return float(np.mean(plan == s.keys.index("ja")))
    assert share(0.3) > 2 * share(1.0)


def test_pack_by_length_restores_order_and_bounds_tokens() -> None:
    seqs = [[1] * n for n in [5, 1, 9, 3, 3, 7, 2]]
    chunks, restore, padding = pack_by_length(seqs, pad_id=0, max_tokens=12)
    for c in chunks:
        assert c["input_ids"].numel() <= 12 or c["input_ids"].shape[0] == 1
    lengths = torch.cat([c["attention_mask"].sum(1) for c in chunks])[restore]
    assert lengths.tolist() == [5, 1, 9, 3, 3, 7, 2]
    total = sum(c["input_ids"].numel() for c in chunks)
    assert padding == total - sum(map(len, seqs))


def test_groups_are_drawn_with_probability_n_to_the_alpha() -> None:
    g = groups()  # "xx" (5 records) is smaller than the batch of 16: drawn as a batch of 5
    sizes = np.array([len(g[k]) for k in sorted(g)], dtype=float)
    for alpha in (0.0, 0.5, 1.0):
        sampler = LanguageTemperatureSampler(g, 16, alpha=alpha, seed=0,
                                             batches_per_epoch=40_000)
        drawn = dict.fromkeys(sampler.keys, 0)
        for item in sampler:
            drawn[item["group"]] += 1
        realised = np.array([drawn[k] for k in sorted(g)], dtype=float) / 40_000
        expected = sizes**alpha / (sizes**alpha).sum()
        np.testing.assert_allclose(realised, expected, rtol=0.05, atol=0.002)


def test_staged_sampler_switches_on_the_step_and_resumes() -> None:
    g = groups()
    first = LanguageTemperatureSampler({"fr": g["fr"]}, 8, seed=2, batches_per_epoch=5)
    second = LanguageTemperatureSampler(g, 8, seed=2, batches_per_epoch=7, stream=1)
    staged = StagedSampler([first, second], ["one", "two"])
    items = list(staged)
    assert [i["stage"] for i in items] == ["one"] * 5 + ["two"] * 7
    assert {i["group"] for i in items[:5]} == {"fr"}
    again = StagedSampler([first, second], ["one", "two"])
    again.load_state_dict({"epoch": 0, "position": 3, "seed": 2})
    rest = list(again)
    assert [(i["stage"], i["group"], i["indices"].tolist()) for i in rest] == [
        (i["stage"], i["group"], i["indices"].tolist()) for i in items[3:]]


def test_pack_by_length_keeps_every_id_and_cuts_greedily() -> None:
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 1000, size=int(n)).tolist() for n in rng.integers(1, 40, size=300)]
    chunks, restore, padding = pack_by_length(seqs, pad_id=0, max_tokens=256)
    rows = [(c["input_ids"][r], c["attention_mask"][r]) for c in chunks
            for r in range(c["input_ids"].shape[0])]
    for seq, (ids, mask) in zip(seqs, [rows[i] for i in restore.tolist()], strict=True):
        assert ids[mask.bool()].tolist() == seq and int(mask.sum()) == len(seq)
        assert (ids[~mask.bool()] == 0).all() and mask[: len(seq)].all()  # left-aligned
    widths = sorted(len(s) for s in seqs)
    at = 0
    for c in chunks:  # each chunk as large as the token bound allows, and no larger
        n, width = c["input_ids"].shape
        at += n
        assert width == widths[at - 1] and (n == 1 or n * width <= 256)
        assert at == len(seqs) or (n + 1) * widths[at] > 256
    assert padding == sum(c["input_ids"].numel() for c in chunks) - sum(widths)
    assert pack_by_length([], pad_id=0, max_tokens=8)[0] == []
