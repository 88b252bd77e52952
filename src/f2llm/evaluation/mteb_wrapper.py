"""Run an f2llm encoder under the `mteb` package (its `EncoderProtocol`).

Queries get `Instruct: {task}\\nQuery: {text}` with an instruction chosen per task; documents
get none. Tasks without a query/document split (STS, clustering, classification, bitext mining)
encode every text as a query, as Qwen3-Embedding does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta
from mteb.types import PromptType
from torch.nn import functional as F

from f2llm.model import Encoder, build_encoder

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from torch.utils.data import DataLoader

# Used when neither the caller nor the task's metadata names an instruction.
DEFAULT_INSTRUCTIONS: dict[str, str] = {
    "Retrieval": "Given a question, retrieve passages that answer the question",
    "Reranking": "Given a query, retrieve the passages relevant to the query",
    "InstructionRetrieval": "Given a query, retrieve the passages relevant to the query",
    "InstructionReranking": "Given a query, retrieve the passages relevant to the query",
    "Clustering": "Identify the topic or theme of the given text",
    "Classification": "Classify the given text",
    "MultilabelClassification": "Classify the given text into all categories that apply",
    "PairClassification": "Retrieve text that is semantically similar to the given text",
    "STS": "Retrieve semantically similar text",
    "Summarization": "Given a summary, retrieve other semantically similar summaries",
    "BitextMining": "Retrieve the sentence that is a translation of the given sentence",
    "Regression": "Represent the given text for predicting its value",
}


class MtebEncoder(AbsEncoder):
    """An `Encoder` as an mteb model: `mteb.evaluate(MtebEncoder(encoder), tasks)`.

    `instructions` maps a task name or task type to a query instruction. The instruction of a
    task is the first of: `instructions[task name]`, `instructions[task type]`, the task's own
    metadata prompt, `DEFAULT_INSTRUCTIONS[task type]`. `dim` truncates the embeddings to one
    Matryoshka dim; the output is L2-normalised either way.
    """

    def __init__(
        self,
        encoder: Encoder,
        instructions: Mapping[str, str] | None = None,
        dim: int | None = None,
        name: str = "f2llm/encoder",
        revision: str = "local",
    ) -> None:
        if dim is not None and not 0 < dim <= encoder.hidden_size:
            raise ValueError(f"dim must be in 1..{encoder.hidden_size}, got {dim}")
        self.model = encoder
        self.instructions = dict(instructions or {})
        self.dim = dim
        self.mteb_model_meta = ModelMeta(
            loader=None,
            name=name,
            revision=revision,
            release_date=None,
            languages=None,
            n_parameters=sum(p.numel() for p in encoder.parameters()),
            memory_usage_mb=None,
            max_tokens=encoder.max_length,
            embed_dim=dim or encoder.hidden_size,
            license=None,
            open_weights=True,
            public_training_code=None,
            public_training_data=None,
            framework=["PyTorch"],
            similarity_fn_name="cosine",
            use_instructions=True,
            training_datasets=None,
            # Results of each dim get their own folder in mteb's result cache.
            experiment_kwargs={"dim": dim} if dim else None,
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        max_length: int | None = None,
        **kwargs: Any,
    ) -> MtebEncoder:
        """From a folder written by `f2llm.export.export_sentence_transformers` (or any local
        Qwen3 folder): weights and tokenizer via our `Encoder`, max length from the folder;
        other arguments as for `MtebEncoder`."""
        folder = Path(path)
        if max_length is None:
            st_config = folder / "sentence_bert_config.json"
            max_length = (json.loads(st_config.read_text())["max_seq_length"]
                          if st_config.exists() else 512)
        encoder = build_encoder(folder.name, pretrained=folder, max_length=max_length)
        if device is not None:
            encoder.to(device)
        kwargs.setdefault("name", f"f2llm/{folder.name}")
        return cls(encoder, **kwargs)

    def instruction(
        self, task_metadata: TaskMetadata, prompt_type: PromptType | None
    ) -> str | None:
        """The query instruction for a task; None for documents."""
        if prompt_type == PromptType.document:
            return None
        for key in (task_metadata.name, task_metadata.type):
            if key in self.instructions:
                return self.instructions[key]
        prompt = task_metadata.prompt
        if isinstance(prompt, Mapping):
            prompt = prompt.get(PromptType.query.value)
        return prompt or DEFAULT_INSTRUCTIONS.get(task_metadata.type)

    def encode(
        self,
        inputs: DataLoader,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """L2-normalised float32 embeddings of the dataloader's texts, in order."""
        texts = [text for batch in inputs for text in batch["text"]]
        emb = self.model.encode(
            texts,
            batch_size=kwargs.get("batch_size", 32),  # mteb passes encode_kwargs here
            instruction=self.instruction(task_metadata, prompt_type),
            normalize=False,
        )
        if self.dim is not None:
            emb = emb[:, : self.dim]
        return F.normalize(emb, dim=-1).numpy()
