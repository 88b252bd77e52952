"""The run-time reader of the tokenized layout's stored token ids, and the check that the model's
tokenizer is the one they were made with."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from f2llm.data.corpus_io import read_ipc
from f2llm.data.sources.f2llm_v2.recipes import INSTRUCTED_PREFIX

# Qwen3's special tokens at these ids (tokenizer_config.json of the Qwen3 models): a tokenizer
# that maps them elsewhere has another vocabulary than the one the data was tokenized with.
QWEN3_SPECIAL_IDS = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>"}


class PretokenizedDocs:
    """Token ids of the tokenized layout: query ids in `corpus.arrow`, documents in `docs.arrow`
    (memory-mapped, opened lazily so that data-loader workers each map it themselves)."""

    def __init__(self, docs_path: str | Path, eos_id: int, max_token_id: int,
                 datasets: Sequence[str], instructions: Sequence[str] = ()) -> None:
        self.docs_path, self.eos_id, self.max_token_id = Path(docs_path), eos_id, max_token_id
        self.datasets = frozenset(datasets)
        self.instructions = list(instructions)
        self._docs: pa.ChunkedArray | None = None
        # Token ids of each instruction's query prefix, and of "Instruct:" (set by `bind`).
        self.prefixes: dict[str, list[int]] = {}
        self.marker: list[int] = []
        self.max_length = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_docs": None}

    def bind(self, tokenizer: Any, max_length: int, query_prompt: Any) -> None:
        """Check `tokenizer` is the one the ids were made with, and keep what batches need
        (plain data, so data-loader workers get a copy): the max length and the prefix ids of
        every instruction, `query_prompt(instruction)` tokenized alone."""
        check_tokenizer(tokenizer, self.eos_id, self.max_token_id)
        self.max_length = max_length
        self.marker = tokenizer(INSTRUCTED_PREFIX, add_special_tokens=False)["input_ids"]
        self.prefixes = {i: tokenizer(query_prompt(i), add_special_tokens=False)["input_ids"]
                         for i in self.instructions}

    @property
    def docs(self) -> pa.ChunkedArray:
        """Every document's token ids (`docs.arrow`, memory-mapped on first use)."""
        if self._docs is None:
            self._docs = read_ipc(self.docs_path).column("input_ids")
        return self._docs

    def token_ids(self, table: pa.Table, indices: np.ndarray, negative_columns: Sequence[str],
                  instruction: str | None) -> list[list[int]]:
        """Queries, passages, then negatives column by column (the order of `TrainBatches`),
        each cut to the max length with EOS kept last. An instruction is tokenized alone and
        put before the query ids (BPE merges across the join are lost: the space after
        "Query:" stays its own token), unless the query already starts with "Instruct:"."""
        from f2llm.data.datamodule import take_rows

        rows = take_rows(table, indices, ["query", "passage", *negative_columns])
        queries = rows["query"]
        if instruction:
            prefix, marker = self.prefixes[instruction], self.marker
            queries = [q if q[: len(marker)] == marker else prefix + q for q in queries]
        doc_rows = np.asarray([r for c in ["passage", *negative_columns] for r in rows[c]],
                              dtype=np.int64)
        docs = take_rows(pa.table({"input_ids": self.docs}), doc_rows, ["input_ids"])
        return [self._cut(ids) for ids in queries + docs["input_ids"]]

    def texts(self, table: pa.Table, indices: np.ndarray, tokenizer: Any) -> dict[str, list[str]]:
        """Queries and passages of some records decoded to text (pruning calibration)."""
        ids = self.token_ids(table, indices, [], None)
        decoded = tokenizer.batch_decode(ids, skip_special_tokens=True)
        return {"query": decoded[: len(indices)], "passage": decoded[len(indices):]}

    def _cut(self, ids: list[int]) -> list[int]:
        # As the official collate (_stack in F2LLM/run.py): cut, then make the last id EOS.
        if len(ids) > self.max_length:
            ids = ids[: self.max_length]
        if ids[-1] != self.eos_id:
            ids = [*ids[:-1], self.eos_id]
        return ids


def check_tokenizer(tokenizer: Any, eos_id: int, max_token_id: int) -> None:
    """The model's tokenizer must be the Qwen3 vocabulary and append the data's EOS id."""
    vocab = len(tokenizer)
    problems = []
    for token_id, token in QWEN3_SPECIAL_IDS.items():
        found = tokenizer.convert_ids_to_tokens(token_id) if token_id < vocab else None
        if found != token:
            problems.append(f"id {token_id} is {found!r}, Qwen3's is {token!r}")
    if max_token_id >= vocab:
        problems.append(f"the data uses token id {max_token_id}, the tokenizer has {vocab}")
    if problems:
        raise ValueError("the tokenized F2LLM-v2 data was made with the Qwen3 tokenizer; the "
                         "model's tokenizer is another (" + "; ".join(problems) + "). Use a "
                         "Qwen3 model/tokenizer (model.tokenizer=null gives the bundled Qwen3 "
                         "files) or the raw layout (data.corpus.layout=raw).")
    appended = tokenizer("a")["input_ids"][-1]
    if appended != eos_id:
        raise ValueError(f"the tokenized F2LLM-v2 data ends every text with id {eos_id} "
                         f"({tokenizer.convert_ids_to_tokens(eos_id)!r}); the model's tokenizer "
                         f"appends {appended} ({tokenizer.convert_ids_to_tokens(appended)!r}). "
                         f"Set +model.eos_token='{tokenizer.convert_ids_to_tokens(eos_id)}' so "
                         "that training and inference end texts alike.")
