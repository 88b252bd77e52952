"""Records, the embedded gettext corpus, per-language sampling and the datamodule."""

from f2llm.data.collate import pack_by_length
from f2llm.data.datamodule import F2LLMDataModule, memory_mapped_table
from f2llm.data.gettext_source import TrainingDataset, build_gettext_corpus
from f2llm.data.sampler import LanguageTemperatureSampler, StagedSampler, temperature_probs

__all__ = [
    "F2LLMDataModule",
    "LanguageTemperatureSampler",
    "StagedSampler",
    "TrainingDataset",
    "build_gettext_corpus",
    "memory_mapped_table",
    "pack_by_length",
    "temperature_probs",
]
