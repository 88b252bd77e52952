"""The three canonical training formats: hard negatives per record, in-batch negatives or not."""

from __future__ import annotations

from dataclasses import dataclass

# Records store at most this many hard negatives (negative_1 .. negative_24 in the public layout).
MAX_NEGATIVES = 24


@dataclass(frozen=True)
class Format:
    """A canonical format: `num_negatives` is the hard negatives per query used by default (and
    so the fewest a record must store); `max_negatives` the most a record may store;
    `min_negatives` the fewest a batch may use."""

    name: str
    num_negatives: int
    max_negatives: int
    use_inbatch: bool
    description: str
    min_negatives: int = 0

    def check_batch_negatives(self, k: int) -> None:
        """A ValueError unless a batch of this format can use `k` hard negatives per query."""
        if self.min_negatives <= k <= self.max_negatives:
            return
        if self.min_negatives == self.max_negatives:
            raise ValueError(f"{self.name} must be {self.min_negatives}: a record is "
                             f"{self.description}")
        raise ValueError(f"{self.name}={k}: a {self.name} batch uses {self.min_negatives} to "
                         f"{self.max_negatives} hard negatives per query")


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("retrieval", 7, MAX_NEGATIVES, True,
               "query, positive passage, hard negatives (also NLI, STS, paraphrase, bitext)"),
        # In a clustering or classification batch other records' positives are often the same
        # cluster or label text, so they would be false in-batch negatives.
        Format("clustering", 9, MAX_NEGATIVES, False,
               "text, a text from the same cluster, texts from other clusters"),
        # Two-way: the other label is the one negative, always there.
        Format("classification", 1, 1, False,
               "text, the matching label text, the other label text (two-way)",
               min_negatives=1),
    )
}


def get_format(name: str) -> Format:
    """The registered format called `name`; a ValueError naming the valid ones otherwise."""
    if not isinstance(name, str) or name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; valid formats: {', '.join(sorted(FORMATS))}")
    return FORMATS[name]
