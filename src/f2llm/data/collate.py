"""The datamodule packs batches with the model's `pack_by_length` (what one forward pass takes
lives with the model; `f2llm.model.teacher` packs with it too)."""

from f2llm.model.packing import pack_by_length

__all__ = ["pack_by_length"]
