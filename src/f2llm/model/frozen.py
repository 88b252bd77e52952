"""A frozen encoder, the KD teacher or the GISTEmbed guide: run online every step, or through an
on-disk embedding cache."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from f2llm.model.encoder import Encoder, build_encoder, weights_dtype
from f2llm.model.hub import resolve_pretrained
from f2llm.model.packing import pack_by_length
from f2llm.paths import private_tmp

log = logging.getLogger(__name__)


def row_keys(chunks: Sequence[dict[str, Tensor]], restore: Tensor) -> list[bytes]:
    """A 16-byte key per text (its token ids), in the batch's original order.

    Keys are token ids, not strings: a changed tokenizer, prompt or max_length changes the ids
    and so can never hit an entry made under the old tokenization.
    """
    keys: list[bytes] = []
    for chunk in chunks:
        ids = chunk["input_ids"].cpu().numpy().astype(np.int32)
        lengths = chunk["attention_mask"].sum(1).tolist()
        keys += [hashlib.blake2b(ids[r, :n].tobytes(), digest_size=16).digest()
                 for r, n in enumerate(lengths)]
    return [keys[i] for i in restore.tolist()]


def encoder_fingerprint(encoder: Encoder) -> str:
    """Hash of the encoder's weights, config, tokenizer and pooling: a cache's identity."""
    h = hashlib.blake2b(digest_size=16)
    h.update(encoder.backbone.config.to_json_string(use_diff=False).encode())
    h.update(encoder.tokenizer.backend_tokenizer.to_str().encode())
    h.update(str(encoder.max_length).encode())
    for name, tensor in sorted(encoder.backbone.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class EmbeddingCache:
    """A frozen encoder's embeddings by token-id key, in shards under `<root>/<fingerprint>/`.

    Each shard is a pair of .npy files (keys, embeddings) written atomically, so a crash loses
    at most the entries not yet flushed; every shard in the folder is loaded at start, so the
    cache serves later epochs, later runs and students of any width. `role` (`teacher`,
    `guide`) names the cache in the log.
    """

    def __init__(self, root: str | Path, fingerprint: str, dim: int, rank: int = 0,
                 flush_every: int = 200_000, dtype: str = "float32",
                 role: str = "teacher") -> None:
        self.folder = Path(root) / fingerprint
        self.role = role
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dim, self.rank, self.flush_every = dim, rank, flush_every
        self.dtype = np.dtype(dtype)
        meta = self.folder / "teacher.json"
        if not meta.exists():
            meta.write_text(json.dumps({"fingerprint": fingerprint, "dim": dim,
                                        "dtype": self.dtype.name}))
        self.index: dict[bytes, tuple[int, int]] = {}
        self.shards: list[np.ndarray] = []
        for keys_file in sorted(self.folder.glob("keys-*.npy")):
            emb_file = keys_file.with_name(keys_file.name.replace("keys-", "emb-"))
            if not emb_file.exists():
                continue  # a shard whose write did not finish
            loaded = self._load_shard(keys_file, emb_file)
            if loaded is None:
                continue
            keys, emb = loaded
            shard = len(self.shards)
            self.shards.append(emb)
            for row, key in enumerate(keys):
                self.index[key.tobytes()] = (shard, row)
        self.pending_keys: list[bytes] = []
        self.pending: list[np.ndarray] = []
        self.pending_index: dict[bytes, int] = {}
        self.hits = self.misses = 0
        if self.index:
            log.info("%s cache %s: %d embeddings", role, self.folder, len(self.index))

    def _load_shard(self, keys_file: Path, emb_file: Path
                    ) -> tuple[np.ndarray, np.ndarray] | None:
        """A shard's keys and (memory-mapped) embeddings; None for a damaged shard, which is
        deleted with a warning: a cache never stops a run, its entries are computed again."""
        try:
            keys = np.load(keys_file)
            emb = np.load(emb_file, mmap_mode="r")
            if keys.dtype != np.dtype("V16") or keys.ndim != 1:
                raise ValueError(f"keys are {keys.dtype} {keys.shape}, not 16-byte keys")
            if emb.ndim != 2 or emb.shape != (len(keys), self.dim):
                raise ValueError(f"embeddings {emb.shape} for {len(keys)} keys of dim {self.dim}")
        except Exception as err:  # truncated or foreign bytes: numpy says ValueError, EOFError...
            log.warning("%s cache: dropping the damaged shard %s + %s (%s: %s); its "
                        "embeddings will be computed again", self.role, emb_file, keys_file.name,
                        type(err).__name__, err)
            # Keys first: a shard counts only while its keys file exists.
            for damaged in (keys_file, emb_file):
                damaged.unlink(missing_ok=True)
            return None
        return keys, emb

    def __len__(self) -> int:
        return len(self.index) + len(self.pending_index)

    def get(self, keys: Sequence[bytes]) -> tuple[np.ndarray, list[int]]:
        """Embeddings for `keys` (rows of misses left at zero) and the positions of misses."""
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        missing = []
        for i, key in enumerate(keys):
            where = self.index.get(key)
            if where is not None:
                out[i] = self.shards[where[0]][where[1]]
                continue
            row = self.pending_index.get(key)
            if row is not None:
                out[i] = self.pending[row]
            else:
                missing.append(i)
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        return out, missing

    def put(self, keys: Sequence[bytes], embeddings: np.ndarray) -> None:
        for key, emb in zip(keys, embeddings, strict=True):
            if key in self.index or key in self.pending_index:
                continue
            self.pending_index[key] = len(self.pending)
            self.pending.append(np.asarray(emb, dtype=self.dtype))
            self.pending_keys.append(key)
        if len(self.pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        # One past this rank's highest number (counting files would reuse a dropped shard's),
        # and a random suffix: runs that share the cache (a sweep's parallel jobs, two runs
        # with one teacher) have the same ranks, and must never write one shard's two files.
        taken = [int(m.group(1)) for f in self.folder.glob(f"*-r{self.rank}-*.npy")
                 if (m := re.fullmatch(rf"(?:emb|keys)-r{self.rank}-(\d+)(?:-[0-9a-f]+)?",
                                       f.stem))]
        stem = f"r{self.rank}-{max(taken, default=-1) + 1:05d}-{uuid.uuid4().hex[:12]}"
        keys = np.frombuffer(b"".join(self.pending_keys), dtype="V16")
        emb = np.stack(self.pending)
        # Embeddings first, keys last: a shard counts only once its keys file exists.
        for name, array in ((f"emb-{stem}.npy", emb), (f"keys-{stem}.npy", keys)):
            tmp = private_tmp(self.folder / name)
            with tmp.open("wb") as fh:
                np.save(fh, array)
            tmp.replace(self.folder / name)
        shard = len(self.shards)
        self.shards.append(np.load(self.folder / f"emb-{stem}.npy", mmap_mode="r"))
        for row, key in enumerate(self.pending_keys):
            self.index[key] = (shard, row)
        self.pending, self.pending_keys, self.pending_index = [], [], {}


class FrozenEncoder(nn.Module):
    """An encoder that is never trained, whose raw embeddings the training reads: the KD
    teacher (the student learns to copy them) or the GISTEmbed guide (it scores candidates).

    `mode="online"` runs the encoder on every batch; `mode="cached"` looks each text up in an
    `EmbeddingCache` first and runs the encoder only on texts it has never seen. `role` is the
    config group it is built from (`teacher`, `guide`), named by its errors.
    """

    def __init__(self, encoder: Encoder, mode: str = "cached",
                 cache_dir: str | Path | None = None, flush_every: int = 200_000,
                 role: str = "teacher") -> None:
        super().__init__()
        if mode not in {"online", "cached"}:
            raise ValueError(f"{role}.mode must be 'online' or 'cached', got {mode!r}")
        if mode == "cached" and cache_dir is None:
            raise ValueError(f"{role}.mode=cached needs {role}.cache_dir")
        self.encoder = encoder.eval().requires_grad_(False)
        self.mode, self.role = mode, role
        self.cache_dir, self.flush_every = cache_dir, flush_every
        self._cache: EmbeddingCache | None = None

    @property
    def hidden_size(self) -> int:
        return self.encoder.hidden_size

    def train(self, mode: bool = True) -> FrozenEncoder:
        # Always in eval mode: Lightning switches the whole module tree to train().
        return super().train(False)

    def cache(self, rank: int = 0) -> EmbeddingCache:
        if self._cache is None:
            self._cache = EmbeddingCache(self.cache_dir, encoder_fingerprint(self.encoder),
                                         self.hidden_size, rank, self.flush_every,
                                         role=self.role)
        return self._cache

    @torch.no_grad()
    def embed(self, chunks: Sequence[dict[str, Tensor]], restore: Tensor, rank: int = 0
              ) -> Tensor:
        """Raw embeddings of the batch's texts, in the batch's original order."""
        if self.mode == "online":
            return self.encoder.forward_chunks(chunks, restore).float()
        device = chunks[0]["input_ids"].device
        cache = self.cache(rank)
        keys = row_keys(chunks, restore)
        out, missing = cache.get(keys)
        if missing:
            ids = _rows(chunks, restore, missing)
            sub_chunks, sub_restore, _ = pack_by_length(
                ids, self.encoder.tokenizer.pad_token_id, max_tokens=8192)
            sub_chunks = [{k: v.to(device) for k, v in c.items()} for c in sub_chunks]
            emb = self.encoder.forward_chunks(sub_chunks, sub_restore.to(device))
            emb = emb.float().cpu().numpy()
            out[missing] = emb
            cache.put([keys[i] for i in missing], emb)
        return torch.from_numpy(out).to(device)

    def flush(self) -> None:
        if self._cache is not None:
            self._cache.flush()


def _rows(chunks: Sequence[dict[str, Tensor]], restore: Tensor, wanted: list[int]
          ) -> list[list[int]]:
    """Token ids (unpadded) of the batch's texts at original positions `wanted`."""
    flat: list[list[int]] = []
    for chunk in chunks:
        ids = chunk["input_ids"].cpu()
        for r, n in enumerate(chunk["attention_mask"].sum(1).tolist()):
            flat.append(ids[r, :n].tolist())
    order = restore.tolist()
    return [flat[order[i]] for i in wanted]


def check_same_tokenizer(frozen: Any, tokenizer: Any, field: str) -> None:
    """A frozen model that reads the student's token ids (a guide) must share its tokenizer:
    the same vocabulary, pad and EOS ids. Otherwise a clear error naming the config field."""
    same = (frozen.pad_token_id == tokenizer.pad_token_id
            and frozen.eos_token_id == tokenizer.eos_token_id
            and frozen.get_vocab() == tokenizer.get_vocab())
    if not same:
        raise ValueError(
            f"{field}: the model's tokenizer ({type(frozen).__name__}, {len(frozen)} tokens) "
            f"differs from the one training uses ({type(tokenizer).__name__}, {len(tokenizer)} "
            "tokens); it reads the batch's token ids, so it must be a model with the same "
            "tokenizer (e.g. an export of this project's training)")


def build_frozen_encoder(path: str | Path, mode: str = "cached",
                         cache_dir: str | Path | None = None, max_length: int = 512,
                         attn_implementation: str = "sdpa", flush_every: int = 200_000,
                         role: str = "teacher", precision: str | None = None) -> FrozenEncoder:
    """A frozen encoder from a local folder or hub name (checked first: offline fails in
    seconds); `role`, the config group (`teacher`, `guide`), names the setting in errors. Its
    weights load in the training `precision`'s dtype (bf16 for `bf16-mixed`/`bf16-true`): it
    only runs forwards, under the training step's autocast, so float32 weights would only
    double its memory on every GPU."""
    encoder = build_encoder(role, pretrained=resolve_pretrained(path, f"{role}.path"),
                            max_length=max_length, attn_implementation=attn_implementation,
                            dtype=weights_dtype(precision))
    return FrozenEncoder(encoder, mode, cache_dir, flush_every, role)
