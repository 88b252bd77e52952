"""The three canonical training formats: hard negatives per record, in-batch negatives or not."""

from __future__ import annotations

from dataclasses import dataclass

# Records store at most this many hard negatives (negative_1 .. negative_24 in the public layout).
MAX_NEGATIVES = 24


@dataclass(frozen=True)
class Format:
    """A canonical format: `num_negatives` is the hard negatives per query used by default (and
    so the fewest a record must store); `max_negatives` the most a record may store."""

    name: str
    num_negatives: int
    max_negatives: int
    use_inbatch: bool
    description: str


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("retrieval", 7, MAX_NEGATIVES, True,
               "query, positive passage, hard negatives (also NLI, STS, paraphrase, bitext)"),
        # In a clustering or classification batch other records' positives are often the same
        # cluster or label text, so they would be false in-batch negatives.
        Format("clustering", 9, MAX_NEGATIVES, False,
               "text, a text from the same cluster, texts from other clusters"),
        Format("classification", 1, 1, False,
               "text, the matching label text, the other label text (two-way)"),
    )
}


def get_format(name: str) -> Format:
    """The registered format called `name`; a ValueError naming the valid ones otherwise."""
    if not isinstance(name, str) or name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; valid formats: {', '.join(sorted(FORMATS))}")
    return FORMATS[name]
