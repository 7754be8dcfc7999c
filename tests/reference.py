"""Straightforward reference implementations the tests check the library against.

They compute the same quantities as the library by another route (every patch instead of
the gathered ones; the timm modules instead of the config), so an equivalence test
between the two can fail. Test code only:
``ssl_zoo`` never calls them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def patch_weights_from_masks(masks: Tensor) -> Tensor:
    """(B, N) bool masks -> (M,) weights 1 / (masked patches of its image), in the order of
    ``x[masks]`` (the collate's ``mask_weights`` gathered per patch)."""
    assert masks.ndim == 2 and masks.dtype == torch.bool, (masks.dtype, masks.shape)
    per_image = 1.0 / masks.sum(dim=-1, keepdim=True).clamp(min=1).float()  # (B, 1)
    return per_image.expand(masks.shape)[masks]


def ibot_patch_loss_dense(
    student_patch_logits: Tensor,
    teacher_patch_probs: Tensor,
    masks: Tensor,
    student_temp: float = 0.1,
) -> Tensor:
    """iBOT on full (B, N, K) patch grids, the (B, N) mask selecting the terms (DINOv2's
    ``iBOTPatchLoss.forward``): every patch computed, then a per-image masked mean, then
    the mean over all B images. Equals ``ibot_patch_loss`` on the gathered patches."""
    assert (
        student_patch_logits.shape == teacher_patch_probs.shape
        and masks.shape == student_patch_logits.shape[:2]
    )
    with torch.autocast(device_type=student_patch_logits.device.type, enabled=False):
        log_p = F.log_softmax(student_patch_logits.float() / student_temp, dim=-1)
        ce = -(teacher_patch_probs.float() * log_p).sum(dim=-1)  # (B, N)
        m = masks.float()
        return ((ce * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)).mean()

