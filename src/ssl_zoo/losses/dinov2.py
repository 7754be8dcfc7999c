"""The DINOv2 objective from head outputs and teacher targets (Oquab et al. 2023, Sec. 4).

``total = dino_weight * (dino_local + dino_global) + ibot_weight * ibot
          + koleo_weight * (KoLeo(view 1) + KoLeo(view 2))``

with two global crops and L local crops of B images each:

- DINO image-level term, normalised by the number of (teacher, student) pairs
  ``n_terms = 2 * L + 2``: every local view against both teacher views, and each global
  view against the teacher's *other* global view (the DINO v1 pairs, summed, so
  ``dino_local + dino_global`` is ``dino_weight`` times DINO's loss);
- iBOT masked-patch term (``ibot.py``);
- KoLeo on the student backbone CLS features, per global view (``koleo.py``).

Teacher targets (centering or Sinkhorn-Knopp) are built by the caller (``targets.py``)
and must carry no gradient; nothing here holds state or reads a schedule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_zoo.losses.dino import dino_cross_entropy_matrix
from ssl_zoo.losses.ibot import MaskedPatches, ibot_patch_loss
from ssl_zoo.losses.koleo import koleo_loss
from ssl_zoo.losses.views import Views

N_GLOBAL_VIEWS = 2  # DINOv2 uses exactly two global crops; the pairing below assumes it


def dinov2_objective(
    student_cls: Views,
    teacher_cls: Views,
    student_features: Views,
    patches: MaskedPatches | None,
    *,
    dino_weight: float = 1.0,
    ibot_weight: float = 1.0,
    koleo_weight: float = 0.1,
    student_temp: float = 0.1,
) -> dict[str, Tensor]:
    """Every term of the DINOv2 loss, weighted, and their sum.

    Args:
        student_cls: student CLS head outputs, each view (B, K): the 2 global crops, then
            the local crops (DINOv2: 8; may be none).
        teacher_cls: the teacher's CLS targets of the 2 global crops, (B, K) each, in the
            order of ``student_cls.global_``.
        student_features: the student backbone CLS features (before the head) of the 2
            global crops, (B, D) each, for KoLeo.
        patches: the masked patches of the global crops (student logits, teacher targets,
            weights), for iBOT; None without masking (then ``ibot_weight`` must be 0).
        dino_weight: weight of both DINO terms (DINOv2 config ``dino.loss_weight``: 1.0).
        ibot_weight: weight of the iBOT term (``ibot.loss_weight``: 1.0).
        koleo_weight: weight of the KoLeo term (``dino.koleo_loss_weight``: 0.1).
        student_temp: student temperature T_s (0.1).

    Returns:
        dict of scalar float32 tensors ``dino_local``, ``dino_global``, ``koleo``, ``ibot``
        (each already multiplied by its weight; a term of weight 0, or the local term
        without local views, is a zero tensor) and ``total`` (their sum).
    """
    for name, weight in (
        ("dino_weight", dino_weight),
        ("ibot_weight", ibot_weight),
        ("koleo_weight", koleo_weight),
    ):
        if weight < 0:
            raise ValueError(f"{name} must be >= 0, got {weight}")
    if len(student_cls.global_) != N_GLOBAL_VIEWS:
        raise ValueError(
            f"student_cls must hold {N_GLOBAL_VIEWS} global views, got {len(student_cls.global_)}"
        )
    for name, views in (("teacher_cls", teacher_cls), ("student_features", student_features)):
        if len(views.global_) != N_GLOBAL_VIEWS or views.local:
            raise ValueError(
                f"{name} must hold the {N_GLOBAL_VIEWS} global views and no local one, "
                f"got {len(views.global_)} and {len(views.local)}"
            )
    batch = student_cls.global_[0].shape[:1]
    if any(f.ndim != 2 or f.shape[:1] != batch for f in student_features.global_):
        raise ValueError(
            f"student_features must be (B, D) views with B = {batch[0]}, "
            f"got {[tuple(f.shape) for f in student_features.global_]}"
        )
    if patches is None and ibot_weight != 0:
        raise ValueError(f"ibot_weight={ibot_weight} needs the masked patches, got patches=None")

    zero = student_cls.global_[0].new_zeros((), dtype=torch.float32)
    dino_local = dino_global = koleo = ibot = zero
    if dino_weight != 0:
        # ce[i, v]: teacher view i against student view v (the globals first); the shapes
        # of every view are checked there.
        ce = dino_cross_entropy_matrix(student_cls, teacher_cls, student_temp)
        n_terms = ce.numel() - N_GLOBAL_VIEWS  # every pair but a global crop with itself
        dino_global = dino_weight * (ce[0, 1] + ce[1, 0]) / n_terms
        if student_cls.local:
            dino_local = dino_weight * ce[:, N_GLOBAL_VIEWS:].sum() / n_terms
    if koleo_weight != 0:
        koleo = koleo_weight * sum(koleo_loss(view) for view in student_features.global_)
    if ibot_weight != 0:
        ibot = ibot_weight * ibot_patch_loss(patches, student_temp)

    return {
        "dino_local": dino_local,
        "dino_global": dino_global,
        "koleo": koleo,
        "ibot": ibot,
        "total": dino_local + dino_global + koleo + ibot,
    }
