"""Teacher for KD: the cache equals the online teacher, persists, and invalidates itself;
unreachable hub names fail fast with a message that names the setting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from f2llm.model import build_encoder
from f2llm.model.frozen import FrozenEncoder, build_frozen_encoder
from f2llm.model.hub import PretrainedNotFound, resolve_pretrained
from f2llm.model.packing import pack_by_length
from tests.conftest import tiny_encoder

TEXTS = ["Open file", "Cannot open directory %s", "Guardar como", "Drucken", "ファイルを開く",
         "Quit", "Open file"]  # a repeated text shares its cache entry


def batch(encoder, texts=TEXTS):
    ids = encoder.tokenizer(texts, truncation=True, max_length=encoder.max_length)["input_ids"]
    chunks, restore, _ = pack_by_length(ids, encoder.tokenizer.pad_token_id, max_tokens=16)
    return chunks, restore


def test_cached_teacher_equals_online_and_persists(tmp_path: Path) -> None:
    online = FrozenEncoder(tiny_encoder(), mode="online")
    chunks, restore = batch(online.encoder)
    expected = online.embed(chunks, restore)
    cached = FrozenEncoder(tiny_encoder(), mode="cached", cache_dir=tmp_path)
    first = cached.embed(chunks, restore)
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=0)
    cache = cached.cache()
    assert cache.misses == len(TEXTS) and len(cache) == len(set(TEXTS))
    again = cached.embed(chunks, restore)
    assert cache.hits == len(TEXTS)
    torch.testing.assert_close(again, expected, atol=1e-5, rtol=0)
    cached.flush()
    # A new run (new process) finds the shards and computes nothing.
    later = FrozenEncoder(tiny_encoder(), mode="cached", cache_dir=tmp_path)
    torch.testing.assert_close(later.embed(chunks, restore), expected, atol=1e-5, rtol=0)
    assert later.cache().misses == 0 and later.cache().hits == len(TEXTS)


def test_cache_is_invalidated_by_new_weights_or_tokenization(tmp_path: Path) -> None:
    teacher = FrozenEncoder(tiny_encoder(), mode="cached", cache_dir=tmp_path)
    chunks, restore = batch(teacher.encoder)
    teacher.embed(chunks, restore)
    teacher.flush()
    changed = tiny_encoder()
    with torch.no_grad():
        changed.backbone.norm.weight.mul_(2)
    other = FrozenEncoder(changed, mode="cached", cache_dir=tmp_path)
    other.embed(chunks, restore)
    assert other.cache().misses == len(TEXTS)  # another fingerprint: another folder
    assert other.cache().folder != teacher.cache().folder
    # Tokenization: a shorter max_length truncates the long texts into other token ids.
    short = tiny_encoder()
    short.max_length = 4
    same_weights = FrozenEncoder(short, mode="cached", cache_dir=tmp_path)
    chunks, restore = batch(short)
    same_weights.embed(chunks, restore)
    assert same_weights.cache().misses > 0


def test_teacher_is_frozen_and_stays_in_eval_mode() -> None:
    teacher = FrozenEncoder(tiny_encoder(), mode="online")
    teacher.train()
    assert not teacher.encoder.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_local_teacher_folder_loads(tmp_path: Path) -> None:
    enc = tiny_encoder()
    enc.backbone.save_pretrained(tmp_path / "teacher")
    enc.tokenizer.save_pretrained(tmp_path / "teacher")
    teacher = build_frozen_encoder(tmp_path / "teacher", mode="online", max_length=32)
    chunks, restore = batch(teacher.encoder)
    torch.testing.assert_close(teacher.embed(chunks, restore),
                               enc.forward_chunks(chunks, restore).detach(), atol=1e-5, rtol=0)


def test_unreachable_hub_name_fails_fast_naming_the_setting(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedNotFound, match=r"teacher\.path=codefuse-ai/F2LLM-v2-0\.6B"):
        build_frozen_encoder("codefuse-ai/F2LLM-v2-0.6B")
    with pytest.raises(PretrainedNotFound, match=r"model\.pretrained=<folder>"):
        build_encoder("x", pretrained="Qwen/Qwen3-0.6B")
    with pytest.raises(PretrainedNotFound, match="no such folder"):
        resolve_pretrained("./no/such/folder")


def test_a_damaged_cache_shard_is_dropped_and_recomputed(tmp_path: Path, caplog) -> None:
    online = FrozenEncoder(tiny_encoder(), mode="online")
    first, second = batch(online.encoder, TEXTS[:3]), batch(online.encoder, TEXTS[3:6])
    cached = FrozenEncoder(tiny_encoder(), mode="cached", cache_dir=tmp_path)
    cached.embed(*first)
    cached.flush()
    cached.embed(*second)
    cached.flush()
    folder = cached.cache().folder
    shards = sorted(folder.glob("emb-*.npy"))
    assert len(shards) == 2
    with shards[0].open("r+b") as fh:  # truncate the first shard (a disk full, a killed copy)
        fh.truncate(shards[0].stat().st_size // 2)

    caplog.set_level("WARNING", logger="f2llm.model.frozen")
    later = FrozenEncoder(tiny_encoder(), mode="cached", cache_dir=tmp_path)
    got = later.embed(*first)
    assert f"dropping the damaged shard {shards[0]}" in caplog.text
    assert "mmap length is greater than file size" in caplog.text
    torch.testing.assert_close(got, online.embed(*first), atol=1e-5, rtol=0)
    assert later.cache().misses == 3  # what the dropped shard held, computed again ...
    torch.testing.assert_close(later.embed(*second), online.embed(*second), atol=1e-5, rtol=0)
    assert later.cache().misses == 3  # ... while the intact shard still serves its texts
    later.flush()
    # The new shard is numbered past the intact one (a count of files would overwrite it).
    assert [p.name[:12] for p in sorted(folder.glob("emb-*.npy"))] == ["emb-r0-00001",
                                                                        "emb-r0-00002"]
    again = FrozenEncoder(tiny_encoder(), mode="cached", cache_dir=tmp_path)
    torch.testing.assert_close(again.embed(*first), online.embed(*first), atol=1e-5, rtol=0)
    again.embed(*second)
    assert again.cache().misses == 0


def test_two_runs_flushing_one_cache_at_once_keep_both_shards(tmp_path: Path,
                                                              monkeypatch) -> None:
    """Two runs sharing a cache folder (same rank 0) flush at the same moment: each writes its
    own shard, and a later run reads both, every text with its own embedding."""
    import threading

    import numpy as np

    online = FrozenEncoder(tiny_encoder(), mode="online")
    parts = [batch(online.encoder, TEXTS[:3]), batch(online.encoder, TEXTS[3:6])]
    runs = [FrozenEncoder(tiny_encoder(), mode="cached", cache_dir=tmp_path) for _ in parts]
    for run, part in zip(runs, parts, strict=True):
        run.embed(*part)
    both_named = threading.Barrier(2, timeout=30)
    save = np.save

    def save_together(fh, array):  # both have chosen their shard's name before either writes
        if array.dtype != np.dtype("V16"):  # the first file of a shard: its embeddings
            both_named.wait()
        save(fh, array)

    monkeypatch.setattr(np, "save", save_together)
    errors: list[BaseException] = []

    def flush(run: FrozenEncoder) -> None:
        try:
            run.flush()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=flush, args=(run,)) for run in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.undo()
    assert not errors, errors
    assert len(list(runs[0].cache().folder.glob("keys-*.npy"))) == 2
    later = FrozenEncoder(tiny_encoder(), mode="cached", cache_dir=tmp_path)
    for part in parts:
        torch.testing.assert_close(later.embed(*part), online.embed(*part), atol=1e-5, rtol=0)
    assert later.cache().misses == 0


def test_a_cache_shard_of_another_width_is_dropped(tmp_path: Path, caplog) -> None:
    teacher = FrozenEncoder(tiny_encoder(), mode="cached", cache_dir=tmp_path)
    teacher.embed(*batch(teacher.encoder))
    teacher.flush()
    emb = next(teacher.cache().folder.glob("emb-*.npy"))
    np.save(emb, np.zeros((len(set(TEXTS)), 7), dtype=np.float32))  # loads, wrong shape
    caplog.set_level("WARNING", logger="f2llm.model.frozen")
    later = FrozenEncoder(tiny_encoder(), mode="cached", cache_dir=tmp_path)
    later.embed(*batch(later.encoder))
    assert "damaged shard" in caplog.text and later.cache().misses == len(TEXTS)
