"""The public F2LLM-v2 training data (Hugging Face dataset codefuse-ai/F2LLM-v2), from a local
folder in either layout of github.com/codefuse-ai/CodeFuse-Embeddings (F2LLM/, commit 1c52915):

- raw: `<name>.parquet` with `query`, `passage`, `negative_1..negative_24` (classification:
  `negative_1`), read into the canonical string table and checked record by record
  (`build_raw`);
- tokenized (`tokenize_data_qwen.py`): `<name>_query.parquet` with token ids and doc-id
  references, `<name>_corpus.parquet` or one `corpus.parquet` with the documents; token ids are
  kept, never re-tokenized (`build_tokenized`, read at run time by `PretokenizedDocs`).

`names`: the official dataset names by format; `recipes`: format, language and instruction of
each dataset from its name; `layout`: which files a folder holds; `download`: the hub copy;
`build`: the registered source `f2llm_v2`; `synthetic`: made-up folders for tests and benchmarks.
"""

from f2llm.data.sources.f2llm_v2.build import F2LLMV2Corpus, build_f2llm_v2_corpus
from f2llm.data.sources.f2llm_v2.download import REPO_ID, download_f2llm_v2
from f2llm.data.sources.f2llm_v2.layout import Layout, dataset_rows, find_layout, recipes_for
from f2llm.data.sources.f2llm_v2.pretokenized import PretokenizedDocs, check_tokenizer
from f2llm.data.sources.f2llm_v2.recipes import (
    FORMAT_OF_NAME,
    DatasetRecipe,
    UnknownDatasetError,
    instruction_for,
    name_language,
    resolve_recipes,
)
from f2llm.data.sources.f2llm_v2.synthetic import EXAMPLE_NAMES, write_synthetic

__all__ = [
    "EXAMPLE_NAMES",
    "FORMAT_OF_NAME",
    "REPO_ID",
    "DatasetRecipe",
    "F2LLMV2Corpus",
    "Layout",
    "PretokenizedDocs",
    "UnknownDatasetError",
    "build_f2llm_v2_corpus",
    "check_tokenizer",
    "dataset_rows",
    "download_f2llm_v2",
    "find_layout",
    "instruction_for",
    "name_language",
    "recipes_for",
    "resolve_recipes",
    "write_synthetic",
]
