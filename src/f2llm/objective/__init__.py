"""F2LLM-v2 training objective as pure functions on embeddings, and GradCache over them."""

from f2llm.objective.contrastive import cosine_logits, hard_negative_loss, inbatch_loss
from f2llm.objective.distillation import distillation_loss
from f2llm.objective.gradcache import gradcache_step
from f2llm.objective.matryoshka import (
    matryoshka_dims,
    matryoshka_loss,
    matryoshka_weights,
)
from f2llm.objective.objective import F2LLMObjective

__all__ = [
    "F2LLMObjective",
    "cosine_logits",
    "distillation_loss",
    "gradcache_step",
    "hard_negative_loss",
    "inbatch_loss",
    "matryoshka_dims",
    "matryoshka_loss",
    "matryoshka_weights",
]
