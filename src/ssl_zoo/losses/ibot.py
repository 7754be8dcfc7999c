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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class MaskedPatches:
    """The iBOT term's inputs: the masked patches of the global crops, gathered (``x[masks]``,
    image-major).

    Attributes:
        student_logits: (M, K) student head outputs at the masked patches.
        teacher_probs: (M, K) teacher targets at the same patches (no gradient).
        weights: (M,) weight of each patch, usually 1 / (masked patches in its image).
        n_images: B, the rows of the (B, N) mask the patches were gathered with, images
            without a masked patch included.
    """

    student_logits: Tensor
    teacher_probs: Tensor
    weights: Tensor
    n_images: int

    @classmethod
    def from_masks(
        cls, student_logits: Tensor, teacher_probs: Tensor, masks: Tensor, mask_weights: Tensor
    ) -> MaskedPatches:
        """The patches gathered with ``masks`` and their weights.

        Args:
            student_logits, teacher_probs: (M, K) at the patches ``masks`` selects.
            masks: (B, N) bool, True where the patch is masked (the batch's ``masks``).
            mask_weights: (B,) the weight of each image's masked patches (the batch's
                ``mask_weights``: 1 / max(masked patches of the image, 1)).
        """
        if masks.ndim != 2 or masks.dtype != torch.bool:
            raise ValueError(
                f"masks must be a (B, N) bool tensor, got {masks.dtype} {tuple(masks.shape)}"
            )
        if mask_weights.shape != masks.shape[:1]:
            raise ValueError(
                f"mask_weights must be (B,) = ({masks.shape[0]},), one per masked image, "
                f"got {tuple(mask_weights.shape)}"
            )
        weights = mask_weights[:, None].expand_as(masks)[masks]  # (M,), the order of x[masks]
        return cls(student_logits, teacher_probs, weights, masks.shape[0])


def ibot_patch_loss(patches: MaskedPatches, student_temp: float = 0.1) -> Tensor:
    """iBOT loss on the gathered masked patches.

    Args:
        patches: the M masked patches (student logits, teacher targets, weights) and the
            number B >= 1 of images they come from.
        student_temp: T_s > 0 (0.1).

    Returns:
        Scalar float32 loss (0 when M = 0).
    """
    if not student_temp > 0:
        raise ValueError(f"student_temp must be > 0, got {student_temp}")
    student, teacher, weights = patches.student_logits, patches.teacher_probs, patches.weights
    if patches.n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {patches.n_images}")
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(
            "student_logits and teacher_probs must both be (M, K), got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if weights.shape != student.shape[:1]:
        raise ValueError(
            f"weights must be (M,) = ({student.shape[0]},), got {tuple(weights.shape)}"
        )
    with torch.autocast(device_type=student.device.type, enabled=False):
        log_p = F.log_softmax(student.float() / student_temp, dim=-1)
        ce = -(teacher.float() * log_p).sum(dim=-1)  # (M,)
        return (ce * weights.float()).sum() / patches.n_images
