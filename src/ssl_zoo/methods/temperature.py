"""Student and teacher temperatures of the DINO family (shared by DINO and DINOv2).

The teacher temperature warms up linearly from ``warmup_teacher_temp`` to
``teacher_temp``, then stays there. The two references count the warm-up differently,
and each method keeps its reference's count:

- DINO (``main_dino.py``): one value per epoch,
  ``np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)`` indexed
  by the epoch, so the temperature moves in steps at epoch boundaries;
- DINOv2 (``CosineScheduler`` with equal warm-up and total lengths): one value per
  iteration over ``warmup_teacher_temp_epochs x iterations per epoch`` iterations.
"""

from __future__ import annotations

import math

from ssl_zoo.methods.base import _check
from ssl_zoo.optim.schedules import linear_warmup


class Temperatures:
    """Args:
    student_temp: temperature of the student softmax (0.1 in both papers).
    teacher_temp: teacher temperature after the warm-up.
    warmup_teacher_temp: teacher temperature at step 0.
    warmup_teacher_temp_epochs: warm-up length in epochs (whole epochs when per_epoch).
    per_epoch: True for DINO's per-epoch values, False for DINOv2's per-iteration ones.
    """

    def __init__(
        self,
        student_temp: float,
        teacher_temp: float,
        warmup_teacher_temp: float,
        warmup_teacher_temp_epochs: float,
        per_epoch: bool,
    ) -> None:
        _check("student_temp", student_temp > 0, student_temp, "> 0")
        _check("teacher_temp", teacher_temp > 0, teacher_temp, "> 0")
        _check("warmup_teacher_temp", warmup_teacher_temp > 0, warmup_teacher_temp, "> 0")
        _check("warmup_teacher_temp_epochs", warmup_teacher_temp_epochs >= 0, warmup_teacher_temp_epochs, ">= 0")
        if per_epoch:
            _check(
                "warmup_teacher_temp_epochs",
                float(warmup_teacher_temp_epochs).is_integer(),
                warmup_teacher_temp_epochs,
                "a whole number of epochs (DINO's temperature changes once per epoch)",
            )
        self.student = student_temp
        self.teacher = teacher_temp
        self.warmup_teacher = warmup_teacher_temp
        self.warmup_epochs = warmup_teacher_temp_epochs
        self.per_epoch = per_epoch

    def teacher_at(self, step: int, steps_per_epoch: int) -> float:
        """Teacher temperature at optimizer step ``step`` (0-based)."""
        if self.per_epoch:
            epoch = step // steps_per_epoch
            return linear_warmup(epoch, int(self.warmup_epochs), self.warmup_teacher, self.teacher)
        warmup_steps = int(math.ceil(self.warmup_epochs * steps_per_epoch))
        return linear_warmup(step, warmup_steps, self.warmup_teacher, self.teacher)
