"""The embedded default corpus, from the machine's gettext catalogs (source `gettext`).

Every `<locale>/LC_MESSAGES/<domain>.mo` under a locale folder holds human translations of
English software messages. Nothing is downloaded; the text is extracted at run time and cached
on disk. Three training sets and a held-out set of each (whole catalogs are held out):
- bitext retrieval (`gettext_bitext`): English -> translation and translation -> English, with
  cheaply mined hard negatives; held out: bitext mining per language;
- clustering (`gettext_domains`): which software component a message comes from. A record is a
  message, a positive from the same component and negatives from other components, all in one
  language. Held out: the held-out catalogs, clustered per language by component;
- two-way classification (`gettext_names`): is a translated name the name of a country
  (iso_3166-1) or of a language (iso_639)? The positive is the matching label text, the single
  negative the other one. Held out: a fixed fifth of the English names, in every language.
"""

from __future__ import annotations

import gettext
import logging
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from f2llm.data.corpus import Corpus, TrainingDataset
from f2llm.data.corpus_io import atomic_write, build_lock, fingerprint, read_json, write_json
from f2llm.data.sources.registry import register

log = logging.getLogger(__name__)

DATASET_NAME = "gettext_bitext"
RETRIEVAL_INSTRUCTION = "Retrieve the sentence that is a translation of the given sentence"
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
_CACHE_VERSION = 3
# Catalogs built from the same sources under two names (iso_639-3 / iso_639_3) or versions
# (postgres-15) collapse to one family, so a held-out family is never seen under another name.
_FAMILY_SUFFIX = re.compile(r"(?P<sep>[-_])\d+(\.\d+)?$")


@dataclass(frozen=True)
class Pair:
    english: str
    translation: str
    language: str
    catalog: str


def catalog_family(domain: str) -> str:
    """Name shared by a catalog's aliases and versions (`iso_639-3`, `iso_639_3` -> `iso_639`;
    `postgres-15` -> `postgres`), keeping standard numbers (`iso_3166`, `iso_15924`)."""
    match = _FAMILY_SUFFIX.search(domain)
    if match:
        stem = domain[: match.start()]
        # "_3" after "iso_639" is an alias suffix; "_3166" after "iso" is the name itself.
        if match["sep"] == "-" or stem[-1:].isdigit():
            domain = stem
    return domain.replace("-", "_")


def _clean(text: str) -> str:
    return " ".join(text.split())


def read_catalogs(locale_dir: str | Path, min_chars: int = 2) -> list[Pair]:
    """Every singular, context-free, actually translated message of every readable catalog."""
    pairs: list[Pair] = []
    unreadable = 0
    for path in sorted(Path(locale_dir).glob("*/LC_MESSAGES/*.mo")):
        language = path.parts[-3]
        if language.startswith("en") or language == "C":
            continue  # English variants are not translations
        try:
            with path.open("rb") as fh:
                catalog = gettext.GNUTranslations(fh)._catalog
        except Exception:
            unreadable += 1
            continue
        for msgid, msgstr in catalog.items():
            # Plural forms are keyed by tuples; msgctxt is joined to the msgid with \x04.
            if not isinstance(msgid, str) or not msgid or "\x04" in msgid:
                continue
            english, translation = _clean(msgid), _clean(msgstr)
            if len(english) < min_chars or len(translation) < min_chars or english == translation:
                continue
            pairs.append(Pair(english, translation, language, path.stem))
    if unreadable:
        log.info("skipped %d unreadable .mo files under %s", unreadable, locale_dir)
    return pairs


def split_by_catalog(
    pairs: Sequence[Pair], val_catalogs: Iterable[str]
) -> tuple[list[Pair], list[Pair]]:
    """Hold out whole catalog families; drop train pairs that also occur in validation."""
    held_out = {catalog_family(c) for c in val_catalogs}
    val = [p for p in pairs if catalog_family(p.catalog) in held_out]
    # The same message often ships in several catalogs (e.g. "Cancel"): without this a held-out
    # sentence would still be trained on.
    val_keys = {(p.language, p.english) for p in val} | {(p.language, p.translation) for p in val}
    train = [
        p
        for p in pairs
        if catalog_family(p.catalog) not in held_out
        and (p.language, p.english) not in val_keys
        and (p.language, p.translation) not in val_keys
    ]
    return _dedupe(train), _dedupe(val)


def _dedupe(pairs: Sequence[Pair]) -> list[Pair]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for p in pairs:
        key = (p.language, p.english, p.translation)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _neighbour_negatives(keys: Sequence[str], num_negatives: int) -> np.ndarray:
    """For each item, `num_negatives` other items whose key sorts next to it.

    Sorting the English text (and its reversal) places messages that share a prefix or a
    suffix side by side ("Cannot open file %s" / "Cannot open directory %s"): lexically close
    negatives for the price of two sorts.
    """
    n = len(keys)
    if n <= num_negatives:
        raise ValueError(f"need more than {num_negatives} pairs to mine negatives, got {n}")
    lowered = [k.lower() for k in keys]
    forward = np.array(sorted(range(n), key=lowered.__getitem__))
    backward = np.array(sorted(range(n), key=lambda i: lowered[i][::-1]))
    out = np.empty((n, num_negatives), dtype=np.int64)
    # Alternate neighbours from the two orders: +1, -1 (prefix), +1, -1 (suffix), +2, ...
    offsets = []
    step = 1
    while len(offsets) < num_negatives:
        offsets += [("f", step), ("f", -step), ("b", step), ("b", -step)]
        step += 1
    rank_f = np.empty(n, dtype=np.int64)
    rank_f[forward] = np.arange(n)
    rank_b = np.empty(n, dtype=np.int64)
    rank_b[backward] = np.arange(n)
    for j, (order, off) in enumerate(offsets[:num_negatives]):
        perm, rank = (forward, rank_f) if order == "f" else (backward, rank_b)
        pos = rank + off
        # Reflect at the ends so every item gets a distinct neighbour.
        pos = np.where(pos >= n, rank - abs(off) - 1, pos)
        pos = np.where(pos < 0, rank + abs(off) + 1, pos)
        out[:, j] = perm[np.clip(pos, 0, n - 1)]
    return out


def retrieval_records(
    pairs: Sequence[Pair], num_negatives: int, seed: int = 0
) -> dict[str, list]:
    """Both directions of every pair, with same-language negatives mined per language."""
    rng = np.random.default_rng(seed)
    by_lang: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_lang.setdefault(p.language, []).append(i)
    cols: dict[str, list] = {"query": [], "passage": [], "language": [], "catalog": [],
                             "direction": []}
    cols.update({f"negative_{j + 1}": [] for j in range(num_negatives)})
    for language in sorted(by_lang):
        idx = by_lang[language]
        if len(idx) <= num_negatives + 1:
            continue  # too few messages in this language to give distinct negatives
        group = [pairs[i] for i in idx]
        neg = _neighbour_negatives([p.english for p in group], num_negatives)
        for direction in ("en->xx", "xx->en"):
            for k, p in enumerate(group):
                src, tgt = (p.english, p.translation) if direction == "en->xx" else (
                    p.translation, p.english)
                cols["query"].append(src)
                cols["passage"].append(tgt)
                cols["language"].append(language)
                cols["catalog"].append(p.catalog)
                cols["direction"].append(direction)
                for j, n in enumerate(neg[k]):
                    other = group[n]
                    cols[f"negative_{j + 1}"].append(
                        other.translation if direction == "en->xx" else other.english)
    order = rng.permutation(len(cols["query"]))
    return {k: [v[i] for i in order] for k, v in cols.items()}


def bitext_pairs(pairs: Sequence[Pair], min_pairs: int, max_pairs: int, seed: int = 0
                 ) -> dict[str, list]:
    """Evaluation pairs per language: unique on both sides, capped, languages with enough."""
    rng = np.random.default_rng(seed)
    by_lang: dict[str, list[Pair]] = {}
    for p in pairs:
        by_lang.setdefault(p.language, []).append(p)
    cols: dict[str, list] = {"source": [], "target": [], "language": [], "catalog": []}
    for language in sorted(by_lang):
        seen_src, seen_tgt, unique = set(), set(), []
        # Two messages with one translation would make the "right" answer ambiguous.
        for p in by_lang[language]:
            if p.english.lower() in seen_src or p.translation.lower() in seen_tgt:
                continue
            seen_src.add(p.english.lower())
            seen_tgt.add(p.translation.lower())
            unique.append(p)
        if len(unique) < min_pairs:
            continue
        chosen = rng.permutation(len(unique))[:max_pairs]
        for i in sorted(chosen):
            p = unique[i]
            cols["source"].append(p.english)
            cols["target"].append(p.translation)
            cols["language"].append(language)
            cols["catalog"].append(p.catalog)
    return cols

# ---------------------------------------------------------------------------------------------
# Stage-2 tasks: clustering and two-way classification


def _family_pools(pairs: Sequence[Pair], families: set[str], min_per_family: int,
                  min_families: int) -> Iterator[tuple[str, dict[str, list[str]]]]:
    """(language, family -> its unique texts) per language in sorted order, keeping families of
    at least `min_per_family` texts and languages with at least `min_families` of them; English
    (`en`) from the msgids of every language."""
    out: dict[str, dict[str, dict[str, None]]] = {}
    for p in pairs:
        family = catalog_family(p.catalog)
        if family not in families:
            continue
        out.setdefault(p.language, {}).setdefault(family, {})[p.translation] = None
        out.setdefault("en", {}).setdefault(family, {})[p.english] = None
    for language in sorted(out):
        pools = {f: list(t) for f, t in sorted(out[language].items()) if len(t) >= min_per_family}
        if len(pools) >= min_families:
            yield language, pools


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
    for language, pools in _family_pools(pairs, set(families), min_per_family, min_families):
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
    cols: dict[str, list] = {"text": [], "label": [], "language": []}
    for language, pools in _family_pools(pairs, families, min_per_family, min_families):
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


@register("gettext")
def build_gettext_corpus(
    locale_dir: str | Path,
    out_dir: str | Path,
    val_catalogs: Sequence[str],
    num_negatives: int = 7,
    val_min_pairs: int = 64,
    val_max_pairs: int = 256,
    seed: int = 0,
) -> Corpus:
    """Build (or reuse) the embedded corpus under `out_dir`.

    Returns the `Corpus`: bitext retrieval, component clustering and country/language
    classification for training, and held-out bitext, clustering and classification sets.
    """
    out = Path(out_dir)
    options = {
        "version": _CACHE_VERSION,
        "locale_dir": str(Path(locale_dir).resolve()),
        "val_catalogs": sorted(val_catalogs),
        "num_negatives": num_negatives,
        "val_min_pairs": val_min_pairs,
        "val_max_pairs": val_max_pairs,
        "seed": seed,
    }
    built_from = fingerprint(options)
    train_sets = [
        TrainingDataset(DATASET_NAME, out / "train.parquet", "retrieval", RETRIEVAL_INSTRUCTION),
        TrainingDataset(CLUSTERING_DATASET, out / "clustering.parquet", "clustering",
                        CLUSTERING_INSTRUCTION),
        TrainingDataset(CLASSIFICATION_DATASET, out / "classification.parquet",
                        "classification", CLASSIFICATION_INSTRUCTION),
    ]
    val_paths = {task: out / f"val_{task}.parquet"
                 for task in ("bitext", "clustering", "classification")}
    result = Corpus(train_sets, dict(val_paths), list(CLASS_LABELS))
    files = [d.path for d in train_sets] + list(val_paths.values())
    manifest_path = out / "manifest.json"
    with build_lock(out):  # other ranks and runs wait, then reuse the files
        cached = read_json(manifest_path)
        if isinstance(cached, dict) and cached.get("fingerprint") == built_from and all(
                p.exists() for p in files):
            log.info("using cached gettext corpus in %s", out)
            return result
        log.info("building gettext corpus from %s into %s", locale_dir, out)
        pairs = read_catalogs(locale_dir)
        if not pairs:
            raise FileNotFoundError(f"no readable .mo catalogs with translations under "
                                    f"{locale_dir}")
        train, val = split_by_catalog(pairs, val_catalogs)
        if not val:
            raise ValueError(f"none of the validation catalogs {list(val_catalogs)} exist under "
                             f"{locale_dir}")
        names_train, names_val = classification_records(train, seed=seed)
        tables = {
            train_sets[0].path: retrieval_records(train, num_negatives, seed),
            train_sets[1].path: clustering_records(train, seed=seed),
            train_sets[2].path: names_train,
            val_paths["bitext"]: bitext_pairs(val, val_min_pairs, val_max_pairs, seed),
            val_paths["clustering"]: clustering_eval_set(val, seed=seed),
            val_paths["classification"]: names_val,
        }
        stats = {}
        for path, cols in tables.items():
            table = pa.table(cols)
            with atomic_write(path) as tmp:
                pq.write_table(table, tmp)
            stats[path.stem] = {"rows": table.num_rows,
                                "languages": len(set(table.column("language").to_pylist()))}
        # Written last: files without it (an interrupted build) are never taken for a cache.
        write_json(manifest_path, {**options, "fingerprint": built_from, "stats": stats})
    log.info("gettext corpus: %s", stats)
    return result
