"""The mteb wrapper: an offline mteb run on local toy tasks, prompts, and the exported folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mteb
import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.abstasks.text.bitext_mining import AbsTaskBitextMining
from mteb.types import PromptType
from sentence_transformers import SentenceTransformer
from torch.utils.data import DataLoader

from f2llm.evaluation import bitext_scores, retrieval_scores
from f2llm.evaluation.mteb_wrapper import DEFAULT_INSTRUCTIONS, MtebEncoder
from f2llm.export import export_sentence_transformers
from tests.conftest import texts, tiny_encoder, toy_retrieval

QUERIES, CORPUS, RELEVANT = toy_retrieval()
SOURCE = texts(20, seed=4)
TARGET = [" ".join([*text.split()[1:], "ok"]) for text in SOURCE]
RETRIEVAL_PROMPT = "Given a toy query, retrieve the toy documents it names"
BITEXT_OVERRIDE = "Find the sentence that translates the given one"

_METADATA: dict[str, Any] = dict(
    description="A toy task built in the test; nothing is downloaded.",
    reference="https://example.org/toy",
    dataset={"path": "local/toy", "revision": "local"},
    category="t2t",
    eval_splits=["test"],
    eval_langs=["eng-Latn"],
    date=("2024-01-01", "2024-01-01"),
    dialect=[],
    domains=[],
    task_subtypes=[],
    license="cc-by-4.0",
    annotations_creators="derived",
    modalities=["text"],
    sample_creation="created",
    bibtex_citation="",
)


class ToyRetrieval(AbsTaskRetrieval):
    metadata = TaskMetadata(name="ToyRetrieval", type="Retrieval", main_score="ndcg_at_10",
                            prompt={"query": RETRIEVAL_PROMPT}, **_METADATA)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        split = RetrievalSplitData(
            queries=Dataset.from_dict({"id": [f"q{i:02d}" for i in range(len(QUERIES))],
                                       "text": QUERIES}),
            corpus=Dataset.from_dict({"id": [f"c{i:02d}" for i in range(len(CORPUS))],
                                      "text": CORPUS, "title": [""] * len(CORPUS)}),
            relevant_docs={f"q{q:02d}": {f"c{d:02d}": 1 for d in docs}
                           for q, docs in RELEVANT.items() if docs},
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


class ToyBitext(AbsTaskBitextMining):
    metadata = TaskMetadata(name="ToyBitext", type="BitextMining", main_score="f1", **_METADATA)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        self.dataset = DatasetDict({"test": Dataset.from_dict({"sentence1": SOURCE,
                                                               "sentence2": TARGET})})
        self.data_loaded = True


def _spy(wrapper: MtebEncoder) -> list[tuple[list[str], str | None]]:
    """Record the texts and instruction of every call to the wrapped encoder."""
    calls: list[tuple[list[str], str | None]] = []
    encode = wrapper.model.encode

    def recording(texts: list[str], **kwargs: Any) -> torch.Tensor:
        calls.append((list(texts), kwargs.get("instruction")))
        return encode(texts, **kwargs)

    wrapper.model.encode = recording
    return calls


# mteb's own bitext code copies a tensor with torch.tensor().
@pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning")
def test_offline_mteb_run_applies_prompts_and_matches_our_metrics() -> None:
    enc = tiny_encoder()
    wrapper = MtebEncoder(enc, instructions={"ToyBitext": BITEXT_OVERRIDE}, dim=16)
    calls = _spy(wrapper)
    result = mteb.evaluate(wrapper, [ToyRetrieval(), ToyBitext()], cache=None,
                           show_progress_bar=False, encode_kwargs={"batch_size": 8})
    scores = {r.task_name: r.scores["test"][0] for r in result.task_results}
    retrieval, bitext = scores["ToyRetrieval"], scores["ToyBitext"]
    for key in ("ndcg_at_10", "mrr_at_10", "recall_at_1", "recall_at_10", "main_score"):
        assert 0 <= retrieval[key] <= 1
    assert retrieval["main_score"] == retrieval["ndcg_at_10"]
    for key in ("accuracy", "f1", "main_score"):
        assert 0 <= bitext[key] <= 1

    # Queries carry the task's own prompt, documents none; both bitext sides the override.
    instruction_of = {text: instruction for texts, instruction in calls for text in texts}
    assert {instruction_of[text] for text in QUERIES[:20]} == {RETRIEVAL_PROMPT}
    assert {instruction_of[text] for text in CORPUS} == {None}
    assert {instruction_of[text] for text in SOURCE + TARGET} == {BITEXT_OVERRIDE}

    # mteb's numbers equal ours on the same embeddings at the same dim.
    q = enc.encode(QUERIES, instruction=RETRIEVAL_PROMPT, normalize=False)
    ours = retrieval_scores(q, enc.encode(CORPUS, normalize=False), RELEVANT, [16])
    for key in ("ndcg_at_10", "mrr_at_10", "recall_at_1", "recall_at_5", "recall_at_10"):
        assert ours[f"{key}@16"] == pytest.approx(retrieval[key], abs=1e-4)
    assert 0 < ours["ndcg_at_10@16"] < 1
    s = enc.encode(SOURCE, instruction=BITEXT_OVERRIDE, normalize=False)
    t = enc.encode(TARGET, instruction=BITEXT_OVERRIDE, normalize=False)
    assert bitext_scores(s, t, [16])["accuracy_s2t@16"] == pytest.approx(bitext["accuracy"])


def _loader(texts: list[str]) -> DataLoader:
    return DataLoader(Dataset.from_dict({"text": texts}), batch_size=4)


def test_instruction_choice() -> None:
    enc = tiny_encoder()
    wrapper = MtebEncoder(enc, instructions={"Retrieval": "by type"})
    retrieval, bitext = ToyRetrieval.metadata, ToyBitext.metadata
    assert wrapper.instruction(retrieval, PromptType.document) is None
    assert wrapper.instruction(retrieval, PromptType.query) == "by type"  # caller's type beats task
    assert wrapper.instruction(bitext, None) == DEFAULT_INSTRUCTIONS["BitextMining"]
    assert MtebEncoder(enc).instruction(retrieval, PromptType.query) == RETRIEVAL_PROMPT
    with pytest.raises(ValueError, match="dim"):
        MtebEncoder(enc, dim=64)


def test_exported_folder_gives_the_same_embeddings(tmp_path: Path) -> None:
    enc = tiny_encoder()
    path = export_sentence_transformers(enc, tmp_path / "export")
    loaded = MtebEncoder.from_pretrained(path, dim=8)
    assert loaded.model.max_length == enc.max_length
    assert loaded.mteb_model_meta.name == "f2llm/export"
    assert loaded.mteb_model_meta.embed_dim == 8
    assert loaded.mteb_model_meta.experiment_name == "dim_8"  # its own folder in mteb's cache
    direct = MtebEncoder(enc, dim=8)
    meta, texts = ToyRetrieval.metadata, QUERIES[:6]
    for prompt_type in (PromptType.query, PromptType.document):
        kwargs = dict(task_metadata=meta, hf_split="test", hf_subset="default",
                      prompt_type=prompt_type)
        got = loaded.encode(_loader(texts), **kwargs)
        assert got.shape == (6, 8) and got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(got, direct.encode(_loader(texts), **kwargs), atol=1e-5)
    # sentence-transformers on the same folder, our query format as its prompt, cut to 8.
    st = SentenceTransformer(str(path), device="cpu", truncate_dim=8)
    query = loaded.encode(_loader(texts), task_metadata=meta, hf_split="test",
                          hf_subset="default", prompt_type=PromptType.query)
    theirs = st.encode(texts, prompt=enc.query_prompt(RETRIEVAL_PROMPT), normalize_embeddings=True)
    np.testing.assert_allclose(query, theirs, atol=1e-5)
