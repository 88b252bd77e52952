"""scripts/bench_prune_distill.py: the over-seeds summary (its runs are the prune->distill
training, covered by test_prune_distill; its numbers belong in docs/benchmarks.md)."""

from __future__ import annotations

import math

from tests.conftest import load_script


def test_seed_summary_pairs_kd_with_no_kd_seed_by_seed() -> None:
    bench = load_script("bench_prune_distill")

    def scores(bitext: float) -> dict[str, float]:
        return {k: bitext if k == "bitext/accuracy" else 0.5 for k in bench.METRICS}

    # Seed 1 is a harder batch order for both runs: the paired difference is +0.02 both times,
    # although the KD runs' spread overlaps the no-KD runs'.
    by_seed = {
        "stage 2, no KD": {0: scores(0.40), 1: scores(0.30)},
        "stage 2, KD, warm cache": {0: scores(0.42), 1: scores(0.32)},
        "stage 2, prefix hidden, no KD": {0: scores(0.50)},
        "stage 2, prefix hidden, KD, warm cache": {0: scores(0.47)},
    }
    summary = bench.seed_summary(by_seed)
    mean, std, n = summary["stage 2, no KD"]["bitext/accuracy"]
    assert math.isclose(mean, 0.35) and math.isclose(std, math.sqrt(0.005)) and n == 2
    mean, std, n = summary["KD - no KD, activation hidden"]["bitext/accuracy"]
    assert math.isclose(mean, 0.02) and std < 1e-12 and n == 2
    mean, std, n = summary["KD - no KD, prefix hidden"]["bitext/accuracy"]
    assert math.isclose(mean, -0.03) and math.isnan(std) and n == 1
    assert summary["KD - no KD, prefix hidden"]["clustering/v_measure"][0] == 0.0


def test_lookup_timing_reads_back_every_text_it_stored() -> None:
    # lookup_ms itself asserts that every key hits the cache a later run would open.
    ms = load_script("bench_prune_distill").lookup_ms(64, repeats=1)
    assert ms > 0 and math.isfinite(ms)


def test_interleaved_timing_trains_each_batch_with_and_without_kd_in_alternating_order() -> None:
    bench = load_script("bench_prune_distill")
    twice = bench.Twice(["a", "b"])
    assert list(twice) == ["a", "a", "b", "b"] and len(twice) == 4

    class Module:  # F2LLMModule's teacher and its setter
        teacher = "the teacher"

        def set_teacher(self, teacher: str | None) -> None:
            self.teacher = teacher

    module, toggle, seen = Module(), bench.KDToggle(), []
    for batch_idx in range(6):
        toggle.on_train_batch_start(None, module, None, batch_idx)
        seen.append(module.teacher)
        toggle.on_train_batch_end(None, module, None, None, batch_idx)
        assert module.teacher == "the teacher"  # restored between steps
    # Pairs 0 and 2: KD first; pair 1: KD second.
    assert seen == ["the teacher", None, None, "the teacher", "the teacher", None]
    assert sorted(toggle.ms["KD, warm cache"]) == sorted(toggle.ms["no KD"]) == [0, 1, 2]

    ms = {"KD, warm cache": {0: 9.0, 1: 3.0, 2: 6.0}, "no KD": {0: 1.0, 1: 2.0, 2: 4.0}}
    assert bench.pair_ratios(ms, skip=1) == [1.5, 1.5]
