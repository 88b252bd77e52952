"""Cross-cutting training steps, one per callback."""

from f2llm.callbacks.data_mix import DataMixLogger
from f2llm.callbacks.export import ExportOnFitEnd
from f2llm.callbacks.matryoshka_eval import MatryoshkaEval
from f2llm.callbacks.pruning import StructuredPruning
from f2llm.callbacks.stages import StageTransition
from f2llm.callbacks.throughput import ThroughputMonitor
from f2llm.callbacks.vocab_trim import TrimVocabulary

__all__ = ["DataMixLogger", "ExportOnFitEnd", "MatryoshkaEval", "StageTransition",
           "StructuredPruning", "ThroughputMonitor", "TrimVocabulary"]
