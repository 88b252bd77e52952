"""The embedded gettext corpus: held-out catalogs, negatives, cache."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from f2llm.data.sources import gettext
from f2llm.data.sources.gettext import (
    Pair,
    _neighbour_negatives,
    build_gettext_corpus,
    catalog_family,
    read_catalogs,
    split_by_catalog,
)
from tests.conftest import TEST_VAL_CATALOGS


def test_catalog_family_merges_aliases_and_versions() -> None:
    assert catalog_family("iso_639-3") == catalog_family("iso_639_3") == "iso_639"
    assert catalog_family("iso_3166-2") == catalog_family("iso_3166") == "iso_3166"
    assert catalog_family("postgres-15") == "postgres"
    assert catalog_family("gtk20-properties") == "gtk20_properties"


def test_split_holds_out_whole_catalogs_and_their_sentences() -> None:
    pairs = [
        Pair("Open", "Ouvrir", "fr", "gtk"),
        Pair("Open", "Ouvrir", "fr", "held"),        # same sentence in a held-out catalog
        Pair("Close", "Fermer", "fr", "gtk"),
        Pair("Save", "Enregistrer", "fr", "held-2"),  # alias of the held-out family
        Pair("Quit", "Quitter", "fr", "held"),
    ]
    train, val = split_by_catalog(pairs, ["held"])
    assert {p.english for p in train} == {"Close"}
    assert {p.english for p in val} == {"Open", "Save", "Quit"}


def test_neighbour_negatives_are_distinct_and_lexically_close() -> None:
    keys = ["Cannot open file", "Cannot open directory", "Cannot close file", "Print", "Printer",
            "Save as", "Save all"]
    neg = _neighbour_negatives(keys, 2)
    for i, row in enumerate(neg):
        assert i not in row.tolist()
    assert keys[neg[keys.index("Save as")][0]] == "Save all" or keys[
        neg[keys.index("Save as")][1]] == "Save all"


def test_build_corpus(tmp_path: Path, locale_dir: Path) -> None:
    found = build_gettext_corpus(locale_dir, tmp_path, TEST_VAL_CATALOGS, num_negatives=3,
                                 val_min_pairs=16, val_max_pairs=32)
    specs = {d.name: d for d in found.train}
    assert {d.format for d in specs.values()} == {"retrieval", "clustering", "classification"}
    train = pq.read_table(specs["gettext_bitext"].path).to_pydict()
    val = pq.read_table(found.val["bitext"]).to_pydict()
    assert set(train) >= {"query", "passage", "negative_1", "negative_3", "language"}
    assert not set(train["catalog"]) & set(TEST_VAL_CATALOGS)
    assert set(val["catalog"]) <= set(TEST_VAL_CATALOGS)
    # No held-out sentence is trained on, in either direction.
    seen = set(zip(train["language"], train["query"], strict=True))
    assert not any((lang, src) in seen for lang, src in zip(val["language"], val["source"],
                                                            strict=True))
    # Both directions exist; negatives differ from the positive.
    n = len(train["query"])
    assert 0 < sum(d == "en->xx" for d in train["direction"]) < n
    differ = sum(train["negative_1"][i] != train["passage"][i] for i in range(n))
    assert differ / n > 0.95
    # Validation pools: unique sources and targets per language, capped.
    for lang in set(val["language"]):
        src = [s for s, lg in zip(val["source"], val["language"], strict=True) if lg == lang]
        assert 16 <= len(src) <= 32 and len(set(src)) == len(src)
    # Second call is served from the cache (no rebuild: files untouched).
    mtime = specs["gettext_bitext"].path.stat().st_mtime_ns
    again = build_gettext_corpus(locale_dir, tmp_path, TEST_VAL_CATALOGS, num_negatives=3,
                                 val_min_pairs=16, val_max_pairs=32)
    assert again.train[0].path.stat().st_mtime_ns == mtime


def test_clustering_and_classification_sets(tmp_path: Path, locale_dir: Path) -> None:
    found = build_gettext_corpus(locale_dir, tmp_path, TEST_VAL_CATALOGS, val_min_pairs=16,
                                 val_max_pairs=32)
    specs = {d.name: d for d in found.train}
    clusters = pq.read_table(specs["gettext_domains"].path).to_pydict()
    assert clusters["query"] and "negative_9" in clusters
    # Positive and negatives are other messages; negatives come from other components.
    assert all(q != p for q, p in zip(clusters["query"], clusters["passage"], strict=True))
    names = pq.read_table(specs["gettext_names"].path).to_pydict()
    labels = set(found.class_labels)
    assert set(names["passage"]) == labels and set(names["negative_1"]) == labels
    assert all(p != n for p, n in zip(names["passage"], names["negative_1"], strict=True))
    held = pq.read_table(found.val["classification"]).to_pydict()
    assert set(held["label"]) == {0, 1}
    # Held-out names are never trained on (in the same language).
    trained = set(zip(names["language"], names["query"], strict=True))
    assert not trained & set(zip(held["language"], held["text"], strict=True))
    val_clusters = pq.read_table(found.val["clustering"]).to_pydict()
    # Held-out clustering uses only the held-out catalogs' components.
    assert set(val_clusters["label"]) <= {"gdk_pixbuf", "xdg_user_dirs", "at_spi2_core"}
    assert len(set(val_clusters["label"])) == 3


def test_read_catalogs_skips_untranslated_and_english(locale_dir: Path) -> None:
    pairs = read_catalogs(locale_dir)
    assert pairs and all(p.english != p.translation for p in pairs)
    assert not any(p.language.startswith("en") for p in pairs)


def test_two_builders_at_once_build_once_and_both_get_the_corpus(
        tmp_path: Path, locale_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs started at once on a fresh checkout (two ranks, a multirun's jobs): one builds
    under the folder's lock, the other waits and reuses the finished corpus. The first reader of
    the catalogs waits (up to seconds) for a second one, which comes only if both build."""
    reads: list[int] = []
    second = threading.Event()

    def read_and_wait(*args: Any, **kw: Any) -> Any:
        reads.append(1)
        if len(reads) == 1:
            second.wait(timeout=3)
        else:
            second.set()
        return read_catalogs(*args, **kw)

    monkeypatch.setattr(gettext, "read_catalogs", read_and_wait)
    results: list[Any] = [None, None]

    def build(i: int) -> None:
        try:
            results[i] = build_gettext_corpus(locale_dir, tmp_path, TEST_VAL_CATALOGS,
                                              num_negatives=3, val_min_pairs=16)
        except Exception as err:
            results[i] = err

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert len(reads) == 1
    assert results[0] == results[1]
    assert not list(tmp_path.glob("*.tmp"))
    assert pq.read_table(tmp_path / "train.parquet").num_rows > 0
