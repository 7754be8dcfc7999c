"""Losses and teacher targets: plain torch, explicit tensors, float32 inside, no state
beyond the softmax center, no schedules (temperatures are arguments)."""

from ssl_zoo.losses.byol import byol_loss
from ssl_zoo.losses.dino import dino_cross_entropy_matrix, dino_loss, dinov2_cross_entropy
from ssl_zoo.losses.dinov2 import dinov2_objective
from ssl_zoo.losses.ibot import ibot_patch_loss, ibot_patch_loss_dense, patch_weights_from_masks
from ssl_zoo.losses.koleo import koleo_loss
from ssl_zoo.losses.targets import (
    TARGET_KINDS,
    SinkhornKnoppTargets,
    SoftmaxCentering,
    build_teacher_targets,
    sinkhorn_knopp,
    softmax_center,
)

__all__ = [
    "TARGET_KINDS",
    "SinkhornKnoppTargets",
    "SoftmaxCentering",
    "build_teacher_targets",
    "byol_loss",
    "dino_cross_entropy_matrix",
    "dino_loss",
    "dinov2_cross_entropy",
    "dinov2_objective",
    "ibot_patch_loss",
    "ibot_patch_loss_dense",
    "koleo_loss",
    "patch_weights_from_masks",
    "sinkhorn_knopp",
    "softmax_center",
]
