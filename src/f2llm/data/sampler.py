"""Batches drawn per (dataset, language) group with temperature sampling, resumable."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np


def temperature_probs(sizes: Sequence[int], alpha: float) -> np.ndarray:
    """p_g proportional to n_g ** alpha (alpha = 1: proportional to size; 0: uniform)."""
    weights = np.asarray(sizes, dtype=np.float64) ** alpha
    return weights / weights.sum()


class _Resumable:
    """A sampler's place in its schedule (epoch, position) and seed, saved in checkpoints."""

    epoch: int
    position: int
    seed: int

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"checkpoint sampler seed {state['seed']} != configured {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class LanguageTemperatureSampler(_Resumable):
    """Yields one rank's share of each global batch; every batch comes from one group.

    Temperature sampling (the default): each batch's group is drawn with replacement with
    probability proportional to n_g ** alpha, and within a group the records are visited in a
    fresh permutation per cycle, so a batch never holds a record twice (which would be a false
    in-batch negative). This deliberately repeats small groups (alpha < 1 lifts them) and makes
    no promise per record: an epoch may draw a record twice or never, and the last
    n_g mod batch records of a cycle are skipped.

    `exhaustive=True` is the exactly-once epoch: every group's records, in a fresh permutation,
    are cut into ceil(n_g / batch_size) batches whose sizes differ by at most one record, and
    all groups' batches run in a shuffled order (alpha is not used). A batch's records are
    split over the ranks in shares that differ by at most one record, so every record of every
    group is used exactly once per pass; `inbatch_loss` gathers the unequal shares. With
    `batches_per_epoch` set, an epoch is that many batches of consecutive passes (the last one
    cut short); left unset, an epoch is one pass.

    The whole schedule is a pure function of (seed, epoch, position): all ranks take the same
    group at a step without talking to each other, and a resumed run continues with exactly
    the batches it would have drawn.
    """

    def __init__(
        self,
        groups: Mapping[str, np.ndarray],
        batch_size: int,
        alpha: float = 1.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        batches_per_epoch: int | None = None,
        stream: int = 0,
        exhaustive: bool = False,
    ) -> None:
        if batch_size % world_size and not exhaustive:
            raise ValueError(f"global batch {batch_size} is not divisible by {world_size} ranks")
        self.keys = sorted(groups)
        self.groups = [np.asarray(groups[k], dtype=np.int64) for k in self.keys]
        self.batch_size = batch_size
        self.alpha = alpha
        self.seed = seed
        self.stream = stream  # separates the draws of samplers that share a seed (stages)
        self.rank = rank
        self.world_size = world_size
        self.exhaustive = exhaustive
        if exhaustive:
            self._init_passes()
            self.batches_per_epoch = batches_per_epoch or self.pass_length
        else:
            self._init_temperature()
            self.batches_per_epoch = batches_per_epoch or max(
                1, int(self.sizes.sum()) // batch_size)
        self.epoch = 0
        self.position = 0  # batches of this epoch already handed out

    def _init_temperature(self) -> None:
        # A group smaller than the batch gets batches of its own size, rounded to the ranks.
        self.group_batch = [min(self.batch_size, len(g)) // self.world_size * self.world_size
                            for g in self.groups]
        usable = [b > 0 for b in self.group_batch]
        if not any(usable):
            raise ValueError("no group has enough records for one batch per rank")
        self.sizes = np.array([len(g) if ok else 0 for g, ok in zip(self.groups, usable,
                                                                     strict=True)])
        # Batches are drawn per group with p proportional to n_g ** alpha (alpha = 1: the public
        # code's size-proportional choice). A group smaller than the batch gives a smaller
        # batch; drawing it more often to make up the records measurably hurt (tiny groups
        # repeated, with weak in-batch negatives).
        self.probs = temperature_probs(self.sizes, self.alpha)

    def _init_passes(self) -> None:
        self.sizes = np.array([len(g) for g in self.groups])
        # Balanced cuts rather than full batches and a remainder: a tail of one or two records
        # would have almost no in-batch negatives and could leave a rank without a record.
        self.batches_of = [-(-int(n) // self.batch_size) for n in self.sizes]
        too_small = [f"{k} ({n} records)" for k, n, m in zip(self.keys, self.sizes,
                                                              self.batches_of, strict=True)
                     if m and n // m < self.world_size]
        if too_small:
            raise ValueError(
                f"exhaustive epochs give each of the {self.world_size} ranks at least one record "
                f"of every batch, which these groups cannot: {', '.join(too_small)}. Drop or "
                f"merge them (data.group_by), raise data.batch_size to at least twice the ranks, "
                f"or use exhaustive=false")
        if not sum(self.batches_of):
            raise ValueError("no records to sample from")
        # Batch j of the pass's plan is the `plan_batch[j]`-th cut of group `plan_group[j]`.
        self.plan_group = np.repeat(np.arange(len(self.keys)), self.batches_of)
        self.plan_batch = np.concatenate([np.arange(m) for m in self.batches_of])
        self.pass_length = len(self.plan_group)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def _pass_order(self, epoch: int, pass_: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.stream, epoch, pass_])
        return rng.permutation(self.pass_length)

    def schedule(self, epoch: int) -> np.ndarray:
        """Group index of every batch of `epoch`."""
        if self.exhaustive:
            passes = -(-self.batches_per_epoch // self.pass_length)
            order = np.concatenate([self._pass_order(epoch, p) for p in range(passes)])
            return self.plan_group[order[: self.batches_per_epoch]]
        rng = np.random.default_rng([self.seed, self.stream, epoch])
        return rng.choice(len(self.keys), size=self.batches_per_epoch, p=self.probs)

    def _group_batch(self, g: int, k: int, epoch: int) -> np.ndarray:
        """The k-th batch drawn from group g in `epoch` (global, all ranks)."""
        b = self.group_batch[g]
        per_cycle = len(self.groups[g]) // b
        cycle, j = divmod(k, per_cycle)
        rng = np.random.default_rng([self.seed, self.stream, epoch, g, cycle])
        perm = rng.permutation(len(self.groups[g]))
        return self.groups[g][perm[j * b : (j + 1) * b]]

    def _group_permutation(self, g: int, epoch: int, pass_: int) -> np.ndarray:
        # Six seed words: never the same stream as a temperature cycle's five.
        rng = np.random.default_rng([self.seed, self.stream, epoch, pass_, g, 1])
        return rng.permutation(len(self.groups[g]))

    def _cut(self, g: int, j: int, perm: np.ndarray) -> np.ndarray:
        """Records of the j-th of group g's balanced batches, given its pass permutation."""
        size, extra = divmod(len(self.groups[g]), self.batches_of[g])
        start = j * size + min(j, extra)
        return self.groups[g][perm[start : start + size + (j < extra)]]

    def _share(self, batch: np.ndarray) -> np.ndarray:
        """This rank's records of a global batch; shares differ by at most one record."""
        return np.array_split(batch, self.world_size)[self.rank]

    def global_batch(self, epoch: int, position: int) -> tuple[str, np.ndarray]:
        if self.exhaustive:
            pass_, at = divmod(position, self.pass_length)
            cut = int(self._pass_order(epoch, pass_)[at])
            g, j = int(self.plan_group[cut]), int(self.plan_batch[cut])
            return self.keys[g], self._cut(g, j, self._group_permutation(g, epoch, pass_))
        plan = self.schedule(epoch)
        g = int(plan[position])
        k = int(np.count_nonzero(plan[:position] == g))
        return self.keys[g], self._group_batch(g, k, epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches = self._exhaustive_batches() if self.exhaustive else self._temperature_batches()
        for g, batch in batches:
            self.position += 1
            yield {"group": self.keys[g], "indices": self._share(batch)}
        self.epoch, self.position = self.epoch + 1, 0

    def _temperature_batches(self) -> Iterator[tuple[int, np.ndarray]]:
        plan = self.schedule(self.epoch)
        seen = np.zeros(len(self.keys), dtype=np.int64)
        np.add.at(seen, plan[: self.position], 1)
        for position in range(self.position, self.batches_per_epoch):
            g = int(plan[position])
            yield g, self._group_batch(g, int(seen[g]), self.epoch)
            seen[g] += 1

    def _exhaustive_batches(self) -> Iterator[tuple[int, np.ndarray]]:
        start = self.position
        for position in range(start, self.batches_per_epoch):
            pass_, at = divmod(position, self.pass_length)
            if at == 0 or position == start:
                order = self._pass_order(self.epoch, pass_)
                perms: dict[int, np.ndarray] = {}  # one permutation per group and pass
            cut = int(order[at])
            g, j = int(self.plan_group[cut]), int(self.plan_batch[cut])
            if g not in perms:
                perms[g] = self._group_permutation(g, self.epoch, pass_)
            yield g, self._cut(g, j, perms[g])


class StagedSampler(_Resumable):
    """Training stages one after another, each with its own groups and temperature sampler.

    An epoch is every stage's batches in order. The batch at (epoch, position) is a pure
    function of the seed, so the stage switch falls on the same step on every rank and after a
    resume, and no callback has to swap data loaders (whose prefetching would blur the switch).
    """

    def __init__(self, samplers: Sequence[LanguageTemperatureSampler],
                 names: Sequence[str]) -> None:
        if len(samplers) != len(names) or not samplers:
            raise ValueError("one name per stage sampler, at least one stage")
        self.samplers = list(samplers)
        self.names = list(names)
        self.seed = self.samplers[0].seed
        self.starts = np.cumsum([0] + [len(s) for s in self.samplers]).tolist()
        self.batches_per_epoch = self.starts[-1]
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def stage_at(self, position: int) -> int:
        """Index of the stage that the epoch's `position`-th batch belongs to."""
        return int(np.searchsorted(self.starts, position, side="right") - 1)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self.position < self.batches_per_epoch:
            s = self.stage_at(self.position)
            sampler = self.samplers[s]
            sampler.epoch, sampler.position = self.epoch, self.position - self.starts[s]
            for item in sampler:
                self.position += 1
                yield {**item, "stage": self.names[s]}
        self.epoch, self.position = self.epoch + 1, 0
