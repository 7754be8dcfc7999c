"""Losses and teacher targets: plain torch, explicit tensors, float32 inside, no state
beyond the softmax center, no schedules (temperatures are arguments)."""

from ssl_zoo.losses.byol import byol_loss
from ssl_zoo.losses.dino import dino_cross_entropy_matrix, dino_loss
from ssl_zoo.losses.dinov2 import dinov2_objective
from ssl_zoo.losses.ibot import MaskedPatches, ibot_patch_loss
from ssl_zoo.losses.koleo import koleo_loss
from ssl_zoo.losses.targets import (
    TARGET_KINDS,
    SinkhornKnoppTargets,
    SoftmaxCentering,
    build_teacher_targets,
    sinkhorn_knopp,
    softmax_center,
)
from ssl_zoo.losses.views import Views

__all__ = [
    "MaskedPatches",
    "TARGET_KINDS",
    "SinkhornKnoppTargets",
    "SoftmaxCentering",
    "Views",
    "build_teacher_targets",
    "byol_loss",
    "dino_cross_entropy_matrix",
    "dino_loss",
    "dinov2_objective",
    "ibot_patch_loss",
    "koleo_loss",
    "sinkhorn_knopp",
    "softmax_center",
]
