"""Structured pruning: activation importance (Minitron style) and slicing to a target shape."""

from f2llm.pruning.importance import Importance, collect_importance, encoder_importance
from f2llm.pruning.slicing import (
    KEPT,
    PRUNABLE,
    PruningPlan,
    apply_plan,
    heads_to_keep,
    plan_pruning,
    prune_backbone,
    prune_heads,
    prune_hidden,
    prune_in_steps,
    prune_layers,
    prune_neurons,
    step_targets,
    top_k,
)

__all__ = [
    "KEPT",
    "PRUNABLE",
    "Importance",
    "PruningPlan",
    "apply_plan",
    "collect_importance",
    "encoder_importance",
    "heads_to_keep",
    "plan_pruning",
    "prune_backbone",
    "prune_heads",
    "prune_hidden",
    "prune_in_steps",
    "prune_layers",
    "prune_neurons",
    "step_targets",
    "top_k",
]
