"""The DINOv2 objective from head outputs and teacher targets (Oquab et al. 2023, Sec. 4).

``total = dino_weight * (dino_local + dino_global) + ibot_weight * ibot
          + koleo_weight * (KoLeo(view 1) + KoLeo(view 2))``

with two global crops and ``n_local_views`` local crops of B images each:

- DINO image-level term, normalised by the number of (teacher, student) pairs
  ``n_terms = 2 * n_local_views + 2``: every local view against both teacher views, and
  each global view against the teacher's *other* global view;
- iBOT masked-patch term (``ibot.py``);
- KoLeo on the student backbone CLS features, per global view (``koleo.py``).

Teacher targets (centering or Sinkhorn-Knopp) are built by the caller (``targets.py``)
and must carry no gradient; nothing here holds state or reads a schedule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_zoo.losses.dino import dinov2_cross_entropy
from ssl_zoo.losses.ibot import ibot_patch_loss
from ssl_zoo.losses.koleo import koleo_loss

N_GLOBAL_VIEWS = 2  # DINOv2 uses exactly two global crops; the swap below assumes it


def dinov2_objective(
    student_local_cls: Tensor | None,
    student_global_cls: Tensor,
    teacher_global_probs: Tensor,
    student_global_backbone_cls: Tensor,
    student_masked_patch_logits: Tensor,
    teacher_masked_patch_probs: Tensor,
    patch_weights: Tensor,
    n_images: int,
    n_local_views: int,
    *,
    dino_weight: float = 1.0,
    ibot_weight: float = 1.0,
    koleo_weight: float = 0.1,
    student_temp: float = 0.1,
) -> dict[str, Tensor]:
    """Every term of the DINOv2 loss, weighted, and their sum.

    Args:
        student_local_cls: (n_local_views * B, K) student CLS head outputs of the local
            crops, view-major; None (or empty) when ``n_local_views == 0``.
        student_global_cls: (2B, K) student CLS head outputs of the global crops [view1; view2].
        teacher_global_probs: (2B, K) teacher CLS targets in view order [view1; view2]; the
            views are swapped here so that student view 1 learns from teacher view 2.
        student_global_backbone_cls: (2B, D) student backbone CLS features (before the
            head) of the global crops, for KoLeo.
        student_masked_patch_logits: (M, K) student patch head outputs at the masked patches
            of the global crops.
        teacher_masked_patch_probs: (M, K) teacher patch targets at the same patches.
        patch_weights: (M,) per-patch weights, 1 / (masked patches in its image)
            (``patch_weights_from_masks``).
        n_images: number of images the masks were drawn for, images without a masked patch
            included: 2B (the rows of the (2B, N) mask).
        n_local_views: number of local crops (DINOv2: 8), may be 0.
        dino_weight: weight of both DINO terms (DINOv2 config ``dino.loss_weight``: 1.0).
        ibot_weight: weight of the iBOT term (``ibot.loss_weight``: 1.0).
        koleo_weight: weight of the KoLeo term (``dino.koleo_loss_weight``: 0.1).
        student_temp: student temperature T_s (0.1).

    Returns:
        dict of scalar float32 tensors ``dino_local``, ``dino_global``, ``koleo``, ``ibot``
        (each already multiplied by its weight; a term of weight 0, or the local term
        without local views, is a zero tensor) and ``total`` (their sum).
    """
    if n_local_views < 0:
        raise ValueError(f"n_local_views must be >= 0, got {n_local_views}")
    for name, weight in (
        ("dino_weight", dino_weight),
        ("ibot_weight", ibot_weight),
        ("koleo_weight", koleo_weight),
    ):
        if weight < 0:
            raise ValueError(f"{name} must be >= 0, got {weight}")
    if student_global_cls.ndim != 2 or student_global_cls.shape[0] % N_GLOBAL_VIEWS != 0:
        raise ValueError(
            f"student_global_cls must be (2B, K), got {tuple(student_global_cls.shape)}"
        )
    if teacher_global_probs.shape != student_global_cls.shape:
        raise ValueError(
            f"teacher_global_probs must be (2B, K) = {tuple(student_global_cls.shape)}, "
            f"got {tuple(teacher_global_probs.shape)}"
        )
    if student_global_backbone_cls.ndim != 2 or (
        student_global_backbone_cls.shape[0] != student_global_cls.shape[0]
    ):
        raise ValueError(
            f"student_global_backbone_cls must be (2B, D) with 2B = {student_global_cls.shape[0]}, "
            f"got {tuple(student_global_backbone_cls.shape)}"
        )
    batch_size = student_global_cls.shape[0] // N_GLOBAL_VIEWS
    n_local_rows = 0 if student_local_cls is None else student_local_cls.shape[0]
    if n_local_rows != n_local_views * batch_size:
        raise ValueError(
            f"student_local_cls must have n_local_views * B = {n_local_views} * {batch_size} "
            f"rows, got {n_local_rows}"
        )

    zero = student_global_cls.new_zeros((), dtype=torch.float32)
    # Pairs: each local view with both teacher views, each global view with the other one.
    n_terms = N_GLOBAL_VIEWS * n_local_views + N_GLOBAL_VIEWS * (N_GLOBAL_VIEWS - 1)

    dino_local = zero
    if n_local_views > 0 and dino_weight != 0:
        dino_local = (
            dino_weight
            * dinov2_cross_entropy(
                student_local_cls, teacher_global_probs, n_local_views, N_GLOBAL_VIEWS, student_temp
            )
            / n_terms
        )

    dino_global = zero
    if dino_weight != 0:
        # Swap the teacher views, then one batch-mean CE over the 2B rows; x2 turns that mean
        # of the two (student view, other teacher view) pairs into their sum.
        teacher_view1, teacher_view2 = teacher_global_probs.chunk(N_GLOBAL_VIEWS)
        swapped = torch.cat((teacher_view2, teacher_view1))
        dino_global = (
            dino_weight
            * N_GLOBAL_VIEWS
            * dinov2_cross_entropy(student_global_cls, swapped, 1, 1, student_temp)
            / n_terms
        )

    koleo = zero
    if koleo_weight != 0:
        koleo = koleo_weight * sum(
            koleo_loss(view) for view in student_global_backbone_cls.chunk(N_GLOBAL_VIEWS)
        )

    ibot = zero
    if ibot_weight != 0:
        ibot = ibot_weight * ibot_patch_loss(
            student_masked_patch_logits,
            teacher_masked_patch_probs,
            patch_weights,
            n_images,
            student_temp,
        )

    return {
        "dino_local": dino_local,
        "dino_global": dino_global,
        "koleo": koleo,
        "ibot": ibot,
        "total": dino_local + dino_global + koleo + ibot,
    }
