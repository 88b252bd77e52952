"""Records, the embedded gettext corpus, per-language sampling and the datamodule."""

from f2llm.data.batch import TrainBatch
from f2llm.data.corpus import Corpus, TrainingDataset
from f2llm.data.datamodule import F2LLMDataModule, memory_mapped_table
from f2llm.data.formats import FORMATS, Format, get_format
from f2llm.data.gettext_source import build_gettext_corpus
from f2llm.data.readers import (
    CorpusFile,
    DatasetSpec,
    read_corpus,
    read_dataset,
    read_manifest,
    write_corpus,
)
from f2llm.data.sampler import LanguageTemperatureSampler, StagedSampler, temperature_probs
from f2llm.data.validation import DataValidationError, SkipReport, check_language_code
from f2llm.model.packing import pack_by_length

__all__ = [
    "FORMATS",
    "Corpus",
    "CorpusFile",
    "DataValidationError",
    "DatasetSpec",
    "F2LLMDataModule",
    "Format",
    "LanguageTemperatureSampler",
    "SkipReport",
    "StagedSampler",
    "TrainBatch",
    "TrainingDataset",
    "build_gettext_corpus",
    "check_language_code",
    "get_format",
    "memory_mapped_table",
    "pack_by_length",
    "read_corpus",
    "read_dataset",
    "read_manifest",
    "temperature_probs",
    "write_corpus",
]
