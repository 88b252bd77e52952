"""Realised per-language mix of the sampler under different alphas (no training).

    python scripts/language_mix.py --alpha 0.3 1.0 [--batches 3000] [overrides ...]

Draws batches from the embedded default's first stage exactly as training would (same sampler,
same seed) and reports the share of records that go to the `--smallest` languages with the
fewest records, and how many times larger that share is than under the last alpha.
"""

from __future__ import annotations

import argparse
from collections import Counter

from hydra.utils import instantiate

from f2llm.compose import compose_train


def realised_language_shares(overrides: list[str], batches: int) -> tuple[Counter, Counter]:
    """(records drawn per language over `batches` batches, records stored per language)."""
    cfg = compose_train(overrides)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    groups = datamodule.plan.groups
    stored: Counter = Counter()
    for group in groups.values():
        stored[group.language] += len(group.rows)
    drawn: Counter = Counter()
    for i, item in enumerate(datamodule.sampler):
        if i == batches:
            break
        drawn[groups[item["group"]].language] += len(item["indices"])
    return drawn, stored


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.3, 1.0])
    ap.add_argument("--batches", type=int, default=3000)
    ap.add_argument("--smallest", type=int, default=20)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.batch_size=512")
    args = ap.parse_args()
    shares = {}
    for alpha in args.alpha:
        drawn, stored = realised_language_shares([f"data.alpha={alpha}", *args.overrides],
                                                 args.batches)
        smallest = sorted(stored, key=lambda lang: (stored[lang], lang))[: args.smallest]
        total = sum(drawn.values())
        shares[alpha] = sum(drawn[lang] for lang in smallest) / total
        stored_share = sum(stored[lang] for lang in smallest) / sum(stored.values())
        print(f"alpha={alpha}: {args.batches} batches, {total} records, {len(stored)} languages; "
              f"the {args.smallest} smallest ({', '.join(smallest)}) hold "
              f"{stored_share:.4%} of the records and get {shares[alpha]:.4%} of those drawn")
    reference = args.alpha[-1]
    for alpha in args.alpha[:-1]:
        print(f"share under alpha={alpha} / share under alpha={reference}: "
              f"{shares[alpha] / shares[reference]:.2f}x")


if __name__ == "__main__":
    main()
