"""Embedding distillation from a wider teacher."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def distillation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """MSE of the raw student embedding [..., Ds] and the teacher's first Ds features.

    The teacher is detached: gradients reach the student only.
    """
    width, teacher_width = student.shape[-1], teacher.shape[-1]
    if teacher_width < width:
        raise ValueError(
            f"teacher width {teacher_width} is smaller than student width {width}: "
            "the teacher can only be cut down, not widened"
        )
    if teacher.shape[:-1] != student.shape[:-1]:
        raise ValueError(
            f"teacher shape {tuple(teacher.shape)} and student shape "
            f"{tuple(student.shape)} differ outside the last axis"
        )
    # The teacher is Matryoshka-trained, so its first Ds features are an embedding.
    return F.mse_loss(student, teacher[..., :width].detach())
