"""Vocabulary trimming (`f2llm.model.vocab`): the same model as full-vocabulary training, a
full-vocabulary export (the same run through `train()` with `callbacks.vocab_trim`:
tests/integration/test_vocab_trim.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from f2llm.export import export_sentence_transformers
from f2llm.model.vocab import (
    TrimmedEmbedding,
    track_weight_decay,
    trim_input_embeddings,
    untrimmed_state,
)
from f2llm.schedule import cosine_with_warmup
from tests.conftest import (
    TEST_VAL_CATALOGS,
    compose_train,
    copy_encoder,
    tiny_encoder,
    tiny_overrides,
)

TEXTS = ["Fichier introuvable", "Cannot open file %s", "Файл не найден", "保存", "x"]


def _batches(encoder, steps: int) -> list[dict[str, torch.Tensor]]:
    words = ["open the file", "save it", "Fichier", "le disque", "print all", "copy a folder"]
    out = []
    for s in range(steps):
        picked = [words[(s + i) % len(words)] for i in range(4)]
        out.append(encoder.tokenize(picked))
    return out


def _train(encoder, batches, trimmed: bool) -> None:
    """A few AdamW steps (weight decay, warmup + cosine lr) of a toy contrastive loss."""
    params = [p for p in encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-2, weight_decay=0.1, fused=True)
    sched = cosine_with_warmup(opt, warmup_steps=2, total_steps=len(batches), min_lr=1e-3)
    if trimmed:
        track_weight_decay(opt, encoder.backbone.get_input_embeddings())
    for batch in batches:
        emb = torch.nn.functional.normalize(encoder(**batch), dim=-1)
        loss = torch.nn.functional.cross_entropy(emb @ emb.roll(1, 0).T / 0.05,
                                                 torch.arange(len(emb)))
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()


def test_trimmed_training_equals_full_vocabulary_training() -> None:
    full = tiny_encoder()
    trim = copy_encoder(full)
    initial = full.backbone.get_input_embeddings().weight.detach().clone()
    batches = _batches(full, 6)
    used = torch.cat([b["input_ids"].reshape(-1) for b in batches])
    table = trim_input_embeddings(trim.backbone, used)
    assert table.keep.numel() < 100 < table.num_embeddings
    # Only the used rows are a parameter: AdamW updates those.
    assert table.rows.shape == (table.keep.numel(), full.hidden_size)
    _train(full, batches, trimmed=False)
    _train(trim, batches, trimmed=True)
    w_full = full.backbone.get_input_embeddings().weight.detach()
    # Every row: the used ones trained, the others only weight-decayed as untrimmed AdamW does.
    torch.testing.assert_close(table.full_weight(), w_full, rtol=1e-6, atol=1e-7)
    assert not torch.equal(w_full, initial)
    for (name, a), (_, b) in zip(list(full.backbone.named_parameters())[1:],
                                 list(trim.backbone.named_parameters())[1:], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
    # Texts with tokens never trained (Cyrillic, CJK) embed the same too.
    torch.testing.assert_close(trim.encode(TEXTS), full.encode(TEXTS), rtol=0, atol=1e-5)


def test_export_of_a_trimmed_encoder_is_the_full_vocabulary(tmp_path: Path) -> None:
    enc = tiny_encoder()
    batches = _batches(enc, 3)
    trim_input_embeddings(enc.backbone, torch.cat([b["input_ids"].reshape(-1) for b in batches]))
    _train(enc, batches, trimmed=True)
    table = enc.backbone.get_input_embeddings()
    path = export_sentence_transformers(enc, tmp_path / "export")
    assert isinstance(enc.backbone.get_input_embeddings(), TrimmedEmbedding)  # training's stays
    saved = load_file(path / "model.safetensors")
    torch.testing.assert_close(saved["embed_tokens.weight"], table.full_weight(), rtol=0, atol=0)
    st = SentenceTransformer(str(path), device="cpu")
    theirs = st.encode(TEXTS, convert_to_tensor=True, batch_size=2)
    torch.testing.assert_close(theirs, enc.encode(TEXTS), atol=1e-5, rtol=0)
    # A checkpoint's trimmed tensors load into a plain encoder as the same model.
    plain = tiny_encoder()
    plain.load_state_dict(untrimmed_state(enc.state_dict()))
    torch.testing.assert_close(plain.encode(TEXTS), enc.encode(TEXTS), atol=1e-6, rtol=0)


def test_token_outside_the_vocabulary_is_refused() -> None:
    enc = tiny_encoder()
    with pytest.raises(ValueError, match="kept token ids"):
        trim_input_embeddings(enc.backbone, torch.tensor([0, 10**7]))


def _small_locale(root: Path, locale: Path) -> Path:
    """Part of the tests' locale slice, enough for every gettext dataset: three languages (one
    written in CJK), four components to cluster, the country and language names."""
    for lang in ("fr", "de", "ja"):
        for catalog in ("tar", "wget", "apt", "bash", "sed", "iso_3166-1", "iso_639-2",
                        *TEST_VAL_CATALOGS):
            src = locale / lang / "LC_MESSAGES" / f"{catalog}.mo"
            if src.exists():
                (root / lang / "LC_MESSAGES").mkdir(parents=True, exist_ok=True)
                (root / lang / "LC_MESSAGES" / src.name).symlink_to(src.resolve())
    return root


def test_training_token_ids_cover_every_batch_of_both_stages(tmp_path: Path,
                                                             locale_dir: Path) -> None:
    """The kept ids include every id the run's batches hold, in the default's two stages
    (the second with instructions, which changes how a query's first word tokenizes)."""
    from hydra.utils import instantiate

    cfg = compose_train(tiny_overrides(tmp_path, _small_locale(tmp_path / "locale", locale_dir)))
    with open_dict(cfg):
        cfg.data.stages = [
            {"name": "s1", "datasets": ["gettext_bitext"], "instructions": False, "steps": 3},
            {"name": "s2", "datasets": ["gettext_bitext", "gettext_domains", "gettext_names"],
             "instructions": True, "steps": 6}]
    encoder = instantiate(cfg.model)
    dm = instantiate(cfg.data, encoder=encoder)
    dm.prepare_data()
    dm.setup("fit")
    keep = set(dm.training_token_ids().tolist())
    drawn = {i for batch in dm.train_dataloader() for chunk in batch.chunks
             for i in chunk["input_ids"].reshape(-1).tolist()}
    assert drawn <= keep
    assert len(keep) < encoder.backbone.get_input_embeddings().num_embeddings


def test_trim_vocabulary_refuses_pruning() -> None:
    from types import SimpleNamespace

    from f2llm.callbacks import StructuredPruning, TrimVocabulary

    trainer = SimpleNamespace(callbacks=[object.__new__(StructuredPruning)])
    module = SimpleNamespace(encoder=tiny_encoder())
    with pytest.raises(ValueError, match="cannot be combined with pruning"):
        TrimVocabulary().setup(trainer, module, "fit")
    assert not isinstance(module.encoder.backbone.get_input_embeddings(), TrimmedEmbedding)
