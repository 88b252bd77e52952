"""Batches drawn per (dataset, language) group with temperature sampling, resumable."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np


def temperature_probs(sizes: Sequence[int], alpha: float) -> np.ndarray:
    """p_g proportional to n_g ** alpha (alpha = 1: proportional to size; 0: uniform)."""
    weights = np.asarray(sizes, dtype=np.float64) ** alpha
    return weights / weights.sum()


class LanguageTemperatureSampler:
    """Yields one rank's share of each global batch; every batch comes from one group.

    Group g is drawn with probability proportional to n_g ** alpha. Within a group the
    records are visited in a fresh permutation per cycle, so a batch never holds a record twice
    (which would be a false in-batch negative). The whole schedule is a pure function of
    (seed, epoch, position): all ranks draw the same group at a step without talking to each
    other, and a resumed run continues with exactly the batches it would have drawn.
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
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} is not divisible by {world_size} ranks")
        self.keys = sorted(groups)
        self.groups = [np.asarray(groups[k], dtype=np.int64) for k in self.keys]
        # A group smaller than the batch gets batches of its own size, rounded to the ranks.
        self.group_batch = [min(batch_size, len(g)) // world_size * world_size for g in self.groups]
        usable = [b > 0 for b in self.group_batch]
        if not any(usable):
            raise ValueError("no group has enough records for one batch per rank")
        self.sizes = np.array([len(g) if ok else 0 for g, ok in zip(self.groups, usable,
                                                                     strict=True)])
        # Batches are drawn per group with p proportional to n_g ** alpha (alpha = 1: the public
        # code's size-proportional choice). A group smaller than the batch gives a smaller
        # batch; drawing it more often to make up the records measurably hurt (tiny groups
        # repeated, with weak in-batch negatives).
        self.probs = temperature_probs(self.sizes, alpha)
        self.batch_size = batch_size
        self.alpha = alpha
        self.seed = seed
        self.stream = stream  # separates the draws of samplers that share a seed (stages)
        self.rank = rank
        self.world_size = world_size
        self.batches_per_epoch = batches_per_epoch or max(1, int(self.sizes.sum()) // batch_size)
        self.epoch = 0
        self.position = 0  # batches of this epoch already handed out

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def schedule(self, epoch: int) -> np.ndarray:
        """Group index of every batch of `epoch`."""
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

    def global_batch(self, epoch: int, position: int) -> tuple[str, np.ndarray]:
        plan = self.schedule(epoch)
        g = int(plan[position])
        k = int(np.count_nonzero(plan[:position] == g))
        return self.keys[g], self._group_batch(g, k, epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        plan = self.schedule(self.epoch)
        seen = np.zeros(len(self.keys), dtype=np.int64)
        np.add.at(seen, plan[: self.position], 1)
        while self.position < self.batches_per_epoch:
            g = int(plan[self.position])
            batch = self._group_batch(g, int(seen[g]), self.epoch)
            seen[g] += 1
            self.position += 1
            share = len(batch) // self.world_size
            yield {"group": self.keys[g],
                   "indices": batch[self.rank * share : (self.rank + 1) * share]}
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"checkpoint sampler seed {state['seed']} != configured {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class StagedSampler:
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

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"checkpoint sampler seed {state['seed']} != configured {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
