"""Stage-2 tasks from the gettext catalogs: clustering and two-way classification.

- Clustering (`gettext_domains`): which software component a message comes from. A record is a
  message, a positive from the same component and negatives from other components, all in one
  language. Held out: the validation catalogs, clustered per language by component.
- Two-way classification (`gettext_names`): is a translated name the name of a country
  (iso_3166-1) or of a language (iso_639)? The positive is the matching label text, the single
  negative the other one. Held out: a fixed fifth of the English names, in every language.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from f2llm.data.sources.gettext import Pair, catalog_family

CLUSTERING_DATASET = "gettext_domains"
CLASSIFICATION_DATASET = "gettext_names"
CLUSTERING_INSTRUCTION = "Identify the software component that the given message comes from"
CLASSIFICATION_INSTRUCTION = "Classify the given name as the name of a country or of a language"
CLASS_LABELS = ("the name of a country or territory", "the name of a language")
# Components with messages in many languages and clearly different subject matter.
CLUSTERING_FAMILIES = (
    "glib20", "gtk20", "gtk20_properties", "coreutils", "libc", "shared_mime_info",
    "xkeyboard_config", "dpkg", "gsettings_desktop_schemas", "tar", "bash", "wget",
    "gettext_tools", "shadow", "gstreamer", "apt", "iso_4217", "iso_15924",
)
COUNTRY_CATALOGS = ("iso_3166-1", "iso_3166")
LANGUAGE_CATALOGS = ("iso_639-2", "iso_639", "iso_639-3", "iso_639_3")


def _by_language_and_family(pairs: Sequence[Pair], families: set[str]
                            ) -> dict[str, dict[str, list[str]]]:
    """Unique texts per language per family; English (`en`) from the msgids of every language."""
    out: dict[str, dict[str, dict[str, None]]] = {}
    for p in pairs:
        family = catalog_family(p.catalog)
        if family not in families:
            continue
        out.setdefault(p.language, {}).setdefault(family, {})[p.translation] = None
        out.setdefault("en", {}).setdefault(family, {})[p.english] = None
    return {lang: {f: list(texts) for f, texts in fams.items()} for lang, fams in out.items()}


def clustering_records(
    pairs: Sequence[Pair],
    families: Sequence[str] = CLUSTERING_FAMILIES,
    per_family: int = 48,
    min_per_family: int = 8,
    min_families: int = 4,
    num_negatives: int = 9,
    seed: int = 0,
) -> dict[str, list]:
    """Clustering records: message, same-component positive, other-component negatives."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {"query": [], "passage": [], "language": []}
    cols.update({f"negative_{j + 1}": [] for j in range(num_negatives)})
    texts = _by_language_and_family(pairs, set(families))
    for language in sorted(texts):
        pools = {f: t for f, t in sorted(texts[language].items()) if len(t) >= min_per_family}
        if len(pools) < min_families:
            continue
        names = list(pools)
        for f, pool in pools.items():
            chosen = rng.permutation(len(pool))[:per_family]
            others = [g for g in names if g != f]
            for i in chosen:
                j = rng.integers(len(pool) - 1)
                j = j + (j >= i)  # any other message of the same component
                cols["query"].append(pool[i])
                cols["passage"].append(pool[j])
                cols["language"].append(language)
                # Negatives from as many different components as possible.
                neg_families = rng.permutation(others)
                for k in range(num_negatives):
                    g = pools[neg_families[k % len(neg_families)]]
                    cols[f"negative_{k + 1}"].append(g[rng.integers(len(g))])
    return cols


def clustering_eval_set(
    pairs: Sequence[Pair],
    per_family: int = 32,
    min_per_family: int = 8,
    min_families: int = 3,
    seed: int = 0,
) -> dict[str, list]:
    """Held-out clustering: texts of the validation catalogs, labelled by component."""
    rng = np.random.default_rng(seed)
    families = {catalog_family(p.catalog) for p in pairs}
    texts = _by_language_and_family(pairs, families)
    cols: dict[str, list] = {"text": [], "label": [], "language": []}
    for language in sorted(texts):
        pools = {f: t for f, t in sorted(texts[language].items()) if len(t) >= min_per_family}
        if len(pools) < min_families:
            continue
        for f, pool in pools.items():
            for i in sorted(rng.permutation(len(pool))[:per_family]):
                cols["text"].append(pool[i])
                cols["label"].append(f)
                cols["language"].append(language)
    return cols


def _held_out(english: str, fraction: int = 5) -> bool:
    # A stable hash (not Python's salted one): the same names are held out on every machine.
    return zlib.crc32(english.lower().encode()) % fraction == 0


def _names(pairs: Sequence[Pair]) -> dict[str, dict[int, dict[str, bool]]]:
    """language -> class (0 country, 1 language) -> name -> held out?"""
    classes = {**{c: 0 for c in COUNTRY_CATALOGS}, **{c: 1 for c in LANGUAGE_CATALOGS}}
    out: dict[str, dict[int, dict[str, bool]]] = {}
    for p in pairs:
        label = classes.get(p.catalog)
        if label is None:
            continue
        for language, text in ((p.language, p.translation), ("en", p.english)):
            out.setdefault(language, {0: {}, 1: {}})[label][text] = _held_out(p.english)
    for language, by_class in out.items():
        # A name in both lists ("Georgian"?) has no right answer.
        both = set(by_class[0]) & set(by_class[1])
        out[language] = {c: {t: h for t, h in names.items() if t not in both}
                         for c, names in by_class.items()}
    return out


def classification_records(pairs: Sequence[Pair], min_per_class: int = 16, seed: int = 0
                           ) -> tuple[dict[str, list], dict[str, list]]:
    """(train records, held-out set) for country-vs-language names, classes balanced per
    language (there are far more language names than country names)."""
    rng = np.random.default_rng(seed)
    train: dict[str, list] = {"query": [], "passage": [], "negative_1": [], "language": []}
    val: dict[str, list] = {"text": [], "label": [], "language": []}
    names = _names(pairs)
    for language in sorted(names):
        by_class = names[language]
        sizes = [len(by_class[0]), len(by_class[1])]
        if min(sizes) < min_per_class:
            continue
        for label in (0, 1):
            items = list(by_class[label].items())
            for i in sorted(rng.permutation(len(items))[: min(sizes)]):
                text, held_out = items[i]
                if held_out:
                    val["text"].append(text)
                    val["label"].append(label)
                    val["language"].append(language)
                else:
                    train["query"].append(text)
                    train["passage"].append(CLASS_LABELS[label])
                    train["negative_1"].append(CLASS_LABELS[1 - label])
                    train["language"].append(language)
    return train, val
