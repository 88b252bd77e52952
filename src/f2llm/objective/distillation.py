"""Embedding distillation from a wider teacher."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def check_teacher_width(teacher_width: int, student_width: int) -> None:
    """A ValueError when the teacher is narrower than the student: KD cuts the teacher down to
    the student's width and cannot widen it."""
    if teacher_width < student_width:
        raise ValueError(f"the teacher is {teacher_width} wide, narrower than the student's "
                         f"{student_width}: KD compares the student's embedding with the "
                         "teacher's cut to the student's width")


def distillation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """MSE of the raw student embedding [..., Ds] and the teacher's first Ds features.

    The teacher is detached: gradients reach the student only.
    """
    width = student.shape[-1]
    check_teacher_width(teacher.shape[-1], width)
    if teacher.shape[:-1] != student.shape[:-1]:
        raise ValueError(
            f"teacher shape {tuple(teacher.shape)} and student shape "
            f"{tuple(student.shape)} differ outside the last axis"
        )
    # The teacher is Matryoshka-trained, so its first Ds features are an embedding.
    return F.mse_loss(student, teacher[..., :width].detach())
