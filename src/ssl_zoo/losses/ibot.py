"""iBOT masked-patch loss (Zhou et al. 2022, Eq. 2; DINOv2 Oquab et al. 2023, Sec. 4).

The student sees a masked global crop and predicts, for each masked patch, the teacher's
target for the same patch of the unmasked crop:
``L = -(1/B) sum_i w_i sum_k t_ik log softmax(s_i / T_s)_k`` over masked patches i, where the
weight ``w_i = 1 / (number of masked patches in the image of i)`` makes each image count
once whatever its mask ratio, and B counts every image, including images without a masked
patch (DINOv2 ``iBOTPatchLoss.forward_masked``). Teacher targets come from ``targets.py``
and must carry no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_student_temp(student_temp: float) -> None:
    if not student_temp > 0:
        raise ValueError(f"student_temp must be > 0, got {student_temp}")


def patch_weights_from_masks(masks: Tensor) -> Tensor:
    """Per-masked-patch weights 1 / (masked patches in its image).

    Args:
        masks: (B, N) bool, True where the patch is masked.

    Returns:
        (M,) float32 weights, M = masks.sum(), in the order of ``x[masks]`` (image-major).
    """
    if masks.ndim != 2 or masks.dtype != torch.bool:
        raise ValueError(
            f"masks must be a (B, N) bool tensor, got {masks.dtype} {tuple(masks.shape)}"
        )
    per_image = 1.0 / masks.sum(dim=-1, keepdim=True).clamp(min=1).float()  # (B, 1)
    return per_image.expand(masks.shape)[masks]


def ibot_patch_loss(
    student_patch_logits: Tensor,
    teacher_patch_probs: Tensor,
    patch_weights: Tensor,
    n_images: int,
    student_temp: float = 0.1,
) -> Tensor:
    """iBOT loss on the gathered masked patches.

    Args:
        student_patch_logits: (M, K) student head outputs at the masked patches.
        teacher_patch_probs: (M, K) teacher targets at the same patches.
        patch_weights: (M,) weight of each patch, usually 1 / (masked patches in its image)
            (see ``patch_weights_from_masks``).
        n_images: B, the number of images the masks were drawn for (images with no masked
            patch included), >= 1.
        student_temp: T_s > 0 (0.1).

    Returns:
        Scalar float32 loss (0 when M = 0).
    """
    _check_student_temp(student_temp)
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if student_patch_logits.ndim != 2 or student_patch_logits.shape != teacher_patch_probs.shape:
        raise ValueError(
            "student_patch_logits and teacher_patch_probs must both be (M, K), got "
            f"{tuple(student_patch_logits.shape)} and {tuple(teacher_patch_probs.shape)}"
        )
    if patch_weights.shape != student_patch_logits.shape[:1]:
        raise ValueError(
            f"patch_weights must be (M,) = ({student_patch_logits.shape[0]},), "
            f"got {tuple(patch_weights.shape)}"
        )
    with torch.autocast(device_type=student_patch_logits.device.type, enabled=False):
        log_p = F.log_softmax(student_patch_logits.float() / student_temp, dim=-1)
        ce = -(teacher_patch_probs.float() * log_p).sum(dim=-1)  # (M,)
        return (ce * patch_weights.float()).sum() / n_images


def ibot_patch_loss_dense(
    student_patch_logits: Tensor,
    teacher_patch_probs: Tensor,
    masks: Tensor,
    student_temp: float = 0.1,
) -> Tensor:
    """iBOT loss on full patch grids, the mask selecting the terms (DINOv2 ``forward``).

    Same value as ``ibot_patch_loss`` on the gathered patches with
    ``patch_weights_from_masks(masks)`` and ``n_images = B``, but computes every patch.

    Args:
        student_patch_logits: (B, N, K) student head outputs for every patch.
        teacher_patch_probs: (B, N, K) teacher targets for every patch.
        masks: (B, N) bool, True where the patch is masked.
        student_temp: T_s > 0.

    Returns:
        Scalar float32 loss.
    """
    _check_student_temp(student_temp)
    if student_patch_logits.ndim != 3 or student_patch_logits.shape != teacher_patch_probs.shape:
        raise ValueError(
            "student_patch_logits and teacher_patch_probs must both be (B, N, K), got "
            f"{tuple(student_patch_logits.shape)} and {tuple(teacher_patch_probs.shape)}"
        )
    if masks.shape != student_patch_logits.shape[:2] or masks.dtype != torch.bool:
        raise ValueError(
            f"masks must be a (B, N) = {tuple(student_patch_logits.shape[:2])} bool tensor, "
            f"got {masks.dtype} {tuple(masks.shape)}"
        )
    with torch.autocast(device_type=student_patch_logits.device.type, enabled=False):
        log_p = F.log_softmax(student_patch_logits.float() / student_temp, dim=-1)
        ce = -(teacher_patch_probs.float() * log_p).sum(dim=-1)  # (B, N)
        m = masks.float()
        per_image = (ce * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)  # (B,)
        return per_image.mean()
