"""DINO cross-entropy between teacher targets and student predictions over views.

DINO (Caron et al. 2021, Eq. 3): ``min sum_{x in global} sum_{x' != x} H(P_t(x), P_s(x'))``
with ``H(a, b) = -sum_k a_k log b_k`` and ``P_s = softmax(s / T_s)``. The teacher targets
(centering or Sinkhorn-Knopp, see ``targets.py``) are computed by the caller and passed in as
probabilities; they must carry no gradient (the caller detaches / uses a frozen teacher).

Views are stacked view-major: rows ``[v * B, (v + 1) * B)`` belong to view ``v``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _views(x: Tensor, n_views: int, name: str) -> Tensor:
    """(V*B, K) -> (V, B, K), validating the row count."""
    if n_views < 1:
        raise ValueError(f"n_{name}_views must be >= 1, got {n_views}")
    if x.ndim != 2 or x.shape[0] % n_views != 0:
        raise ValueError(
            f"{name} tensor must be (n_{name}_views * B, K) with n_{name}_views={n_views}, "
            f"got shape {tuple(x.shape)}"
        )
    return x.reshape(n_views, x.shape[0] // n_views, x.shape[1])


def dino_cross_entropy_matrix(
    student_logits: Tensor,
    teacher_probs: Tensor,
    n_student_views: int,
    n_teacher_views: int,
    student_temp: float = 0.1,
) -> Tensor:
    """Batch-mean cross-entropy of every (teacher view, student view) pair.

    Args:
        student_logits: (S*B, K) student head outputs, view-major.
        teacher_probs: (T*B, K) teacher targets (rows sum to 1), view-major.
        n_student_views: S.
        n_teacher_views: T.
        student_temp: student temperature T_s > 0 (DINO: 0.1).

    Returns:
        (T, S) float32 matrix, entry [i, v] = mean_b H(teacher_i[b], softmax(student_v[b] / T_s)).
    """
    if not student_temp > 0:
        raise ValueError(f"student_temp must be > 0, got {student_temp}")
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        s = _views(student_logits.float(), n_student_views, "student")
        t = _views(teacher_probs.float(), n_teacher_views, "teacher")
        if s.shape[1:] != t.shape[1:]:
            raise ValueError(
                f"student views are (B={s.shape[1]}, K={s.shape[2]}) but teacher views are "
                f"(B={t.shape[1]}, K={t.shape[2]})"
            )
        log_p = F.log_softmax(s / student_temp, dim=-1)  # (S, B, K), once for all pairs
        # One contraction over (b, k) for all pairs instead of a loop over pairs.
        return -torch.einsum("tbk,sbk->ts", t, log_p) / s.shape[1]


def dino_loss(
    student_logits: Tensor,
    teacher_probs: Tensor,
    n_student_views: int,
    n_teacher_views: int,
    student_temp: float = 0.1,
) -> Tensor:
    """DINO v1 loss: mean over pairs (teacher view i, student view v) with v != i.

    The first ``n_teacher_views`` student views are the global crops seen by the teacher
    (view i of the student is the same crop as view i of the teacher), the rest are local
    crops. DINO averages over the ``T * S - T`` remaining pairs (``main_dino.py``
    ``DINOLoss``).

    Args:
        student_logits: (S*B, K) student outputs, globals first, view-major.
        teacher_probs: (T*B, K) teacher targets, view-major.
        n_student_views: S (DINO: 2 global + 10 local).
        n_teacher_views: T <= S (DINO: 2).
        student_temp: T_s > 0.

    Returns:
        Scalar float32 loss.
    """
    if n_teacher_views > n_student_views:
        raise ValueError(
            f"n_teacher_views ({n_teacher_views}) must be <= n_student_views "
            f"({n_student_views}): the teacher views are the student's first views"
        )
    if n_student_views < 2:
        raise ValueError(
            f"n_student_views must be >= 2 to have a pair v != i, got {n_student_views}"
        )
    ce = dino_cross_entropy_matrix(
        student_logits, teacher_probs, n_student_views, n_teacher_views, student_temp
    )
    same_view = torch.eye(n_teacher_views, n_student_views, dtype=torch.bool, device=ce.device)
    n_pairs = n_teacher_views * n_student_views - n_teacher_views
    return ce.masked_fill(same_view, 0.0).sum() / n_pairs


def dinov2_cross_entropy(
    student_logits: Tensor,
    teacher_probs: Tensor,
    n_student_views: int,
    n_teacher_views: int,
    student_temp: float = 0.1,
) -> Tensor:
    """Sum over every (student view, teacher view) pair of the batch-mean cross-entropy.

    This is DINOv2's ``DINOLoss.forward``: no pair is skipped and nothing is averaged over
    pairs; the DINOv2 objective (``dinov2.py``) does the pairing and scaling.

    Args:
        student_logits: (S*B, K) student outputs, view-major.
        teacher_probs: (T*B, K) teacher targets, view-major.
        n_student_views: S.
        n_teacher_views: T.
        student_temp: T_s > 0.

    Returns:
        Scalar float32 loss.
    """
    return dino_cross_entropy_matrix(
        student_logits, teacher_probs, n_student_views, n_teacher_views, student_temp
    ).sum()
