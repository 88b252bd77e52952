"""The models `HeldoutEvaluator` embeds with: anything with a `width` and an `embed(texts,
query)` that returns raw (unnormalised) full-width float32 embeddings on the CPU, in input
order. `query` is the training dataset whose queries the texts are (its instruction or named
prompt applies); None: the texts are documents."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from f2llm.model.encoder import inference_autocast
from f2llm.model.packing import pack_by_length

if TYPE_CHECKING:
    from f2llm.data.corpus import TrainingDataset
    from f2llm.model import Encoder, TruncatingTokenizer


class Embedder(Protocol):
    width: int

    def embed(self, texts: Sequence[str], query: TrainingDataset | None) -> Tensor: ...


class PackedEncoder:
    """An `Encoder` in training, embedding as training batches are made: texts tokenized by
    `tokenize`, in length-sorted groups of `texts_per_item`, each packed into chunks of at most
    `max_tokens_per_chunk` padded tokens and run through `Encoder.forward_chunks` on `device`.

    Every rank of a run calls it with the same texts, so every rank runs the same forwards, as a
    sharded encoder needs (`f2llm.parallel` registers `forward_chunks` as an FSDP2 forward)."""

    def __init__(self, encoder: Encoder, tokenize: TruncatingTokenizer, device: torch.device,
                 texts_per_item: int = 256, max_tokens_per_chunk: int = 8192) -> None:
        self.encoder, self.tokenize, self.device = encoder, tokenize, device
        self.texts_per_item, self.max_tokens = texts_per_item, max_tokens_per_chunk
        self.width = encoder.hidden_size

    @torch.no_grad()
    def embed(self, texts: Sequence[str], query: TrainingDataset | None) -> Tensor:
        instruction = query.instruction if query is not None else None
        was_training = self.encoder.training
        self.encoder.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.width)
        for start in range(0, len(order), self.texts_per_item):
            rows = order[start : start + self.texts_per_item]
            ids = self.tokenize([self.encoder.format_query(texts[r], instruction) for r in rows])
            chunks, restore, _ = pack_by_length(ids, self.tokenize.pad_id, self.max_tokens)
            chunks = [{k: v.to(self.device) for k, v in c.items()} for c in chunks]
            with inference_autocast(self.encoder.backbone):
                emb = self.encoder.forward_chunks(chunks, restore.to(self.device))
            out[torch.as_tensor(rows)] = emb.float().cpu()
        self.encoder.train(was_training)
        return out


class EncoderEmbedder:
    """An `Encoder` through `Encoder.encode` (a checkpoint's, or one in memory). Queries get
    `instructions[dataset name]` (None: each dataset's own instruction)."""

    def __init__(self, encoder: Encoder, batch_size: int = 256,
                 instructions: Mapping[str, str] | None = None) -> None:
        self.encoder, self.batch_size, self.instructions = encoder, batch_size, instructions
        self.width = encoder.hidden_size

    def embed(self, texts: Sequence[str], query: TrainingDataset | None) -> Tensor:
        if query is None:
            instruction = None
        elif self.instructions is None:
            instruction = query.instruction
        else:
            instruction = self.instructions.get(query.name)
        return self.encoder.encode(list(texts), self.batch_size, instruction=instruction,
                                   normalize=False)


class SentenceTransformerEmbedder:
    """A sentence-transformers model (an f2llm export or any other): queries get the model's
    prompt named after their dataset, where it has one."""

    def __init__(self, model: Any, batch_size: int = 256) -> None:
        self.model, self.batch_size = model, batch_size
        self.prompts = {name for name, prompt in (model.prompts or {}).items() if prompt}
        # sentence-transformers 5 renamed it (the old name warns); older releases have only the
        # old one.
        self.width: int = getattr(model, "get_embedding_dimension",
                                  model.get_sentence_embedding_dimension)()

    def embed(self, texts: Sequence[str], query: TrainingDataset | None) -> Tensor:
        named = query is not None and query.name in self.prompts
        kwargs = {"prompt_name": query.name} if named else {}
        return self.model.encode(list(texts), batch_size=self.batch_size, convert_to_tensor=True,
                                 **kwargs).float().cpu()
