"""Training data: the corpus sources that build it (`sources`: gettext, manifest, f2llm_v2, and
any registered with `sources.register`), the corpus files they write (`corpus_io`), the record
checks (`records`), per-language sampling and the datamodule."""

from f2llm.data.batch import TrainBatch
from f2llm.data.corpus import Corpus, TrainingDataset
from f2llm.data.corpus_io import CorpusFile, read_corpus
from f2llm.data.formats import FORMATS, Format, get_format
from f2llm.data.readers import DatasetSpec, read_dataset, write_corpus
from f2llm.data.records import DataError, SkipReport, check_language_code
from f2llm.data.sampler import LanguageTemperatureSampler, StagedSampler, temperature_probs
from f2llm.data.sources import SOURCES, build_corpus, register
from f2llm.data.sources.f2llm_v2 import build_f2llm_v2_corpus
from f2llm.data.sources.gettext import build_gettext_corpus
from f2llm.data.sources.manifest import build_manifest_corpus, read_manifest
from f2llm.model.packing import pack_by_length

__all__ = [
    "FORMATS",
    "SOURCES",
    "Corpus",
    "CorpusFile",
    "DataError",
    "DatasetSpec",
    "F2LLMDataModule",
    "Format",
    "LanguageTemperatureSampler",
    "SkipReport",
    "StagedSampler",
    "TrainBatch",
    "TrainingDataset",
    "build_corpus",
    "build_f2llm_v2_corpus",
    "build_gettext_corpus",
    "build_manifest_corpus",
    "check_language_code",
    "get_format",
    "memory_mapped_table",
    "pack_by_length",
    "read_corpus",
    "read_dataset",
    "read_manifest",
    "register",
    "temperature_probs",
    "write_corpus",
]


def __getattr__(name: str) -> object:
    """The datamodule on first use: it imports Lightning (seconds), which the config checks
    (`f2llm.config_checks`, run before any work) and the corpus sources do not need."""
    if name in {"F2LLMDataModule", "memory_mapped_table"}:
        from f2llm.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
