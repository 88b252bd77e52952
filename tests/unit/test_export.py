"""The exported folder loads in sentence-transformers and plain transformers, same embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from f2llm.export import export_sentence_transformers
from f2llm.model import last_token_pool
from tests.conftest import tiny_encoder

TEXTS = ["Fichier introuvable", "Cannot open file %s", "Файл не найден", "保存", "x"]
TASK = "Retrieve the sentence that is a translation of the given sentence"


def test_sentence_transformers_matches_our_embeddings(tmp_path: Path) -> None:
    enc = tiny_encoder()
    path = export_sentence_transformers(enc, tmp_path / "export", query_instruction=TASK)
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_lasttoken"] is True
    st = SentenceTransformer(str(path), device="cpu")
    ours = enc.encode(TEXTS)
    theirs = st.encode(TEXTS, convert_to_tensor=True, batch_size=2)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    # The saved query prompt reproduces our instruction format.
    q_theirs = st.encode(TEXTS, prompt_name="query", convert_to_tensor=True)
    torch.testing.assert_close(q_theirs, enc.encode(TEXTS, instruction=TASK), atol=1e-5, rtol=0)


def test_plain_transformers_loads_the_export(tmp_path: Path) -> None:
    enc = tiny_encoder()
    path = export_sentence_transformers(enc, tmp_path / "export")
    model = AutoModel.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    assert (batch["input_ids"][0, batch["attention_mask"][0].sum() - 1]
            == tok.convert_tokens_to_ids("<|endoftext|>"))
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    emb = torch.nn.functional.normalize(last_token_pool(hidden, batch["attention_mask"]), dim=-1)
    torch.testing.assert_close(emb, enc.encode(TEXTS), atol=1e-5, rtol=0)
