"""DINO cross-entropy between teacher targets and student predictions over views.

DINO (Caron et al. 2021, Eq. 3): ``min sum_{x in global} sum_{x' != x} H(P_t(x), P_s(x'))``
with ``H(a, b) = -sum_k a_k log b_k`` and ``P_s = softmax(s / T_s)``. The teacher targets
(centering or Sinkhorn-Knopp, see ``targets.py``) are computed by the caller and passed in as
probabilities; they must carry no gradient (the caller detaches / uses a frozen teacher).

Every view is its own (B, K) tensor, the same B images in every view (``views.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_zoo.losses.views import Views


def dino_cross_entropy_matrix(student: Views, teacher: Views, student_temp: float = 0.1) -> Tensor:
    """Batch-mean cross-entropy of every (teacher view, student view) pair.

    Args:
        student: S views (B, K), student head outputs (``all``: globals then locals).
        teacher: T views (B, K), teacher targets (rows sum to 1).
        student_temp: student temperature T_s > 0 (DINO: 0.1).

    Returns:
        (T, S) float32 matrix, entry [i, v] = mean_b H(teacher view i, student view v).
    """
    if not student_temp > 0:
        raise ValueError(f"student_temp must be > 0, got {student_temp}")
    s, t = student.stacked("student views"), teacher.stacked("teacher views")
    if s.ndim != 3 or s.shape[1:] != t.shape[1:]:
        raise ValueError(
            f"student and teacher views must all be (B, K) of one shape, got {tuple(s.shape[1:])} "
            f"(student) and {tuple(t.shape[1:])} (teacher)"
        )
    with torch.autocast(device_type=s.device.type, enabled=False):
        log_p = F.log_softmax(s.float() / student_temp, dim=-1)  # (S, B, K), once for all pairs
        # One contraction over (b, k) for all pairs instead of a loop over pairs.
        return -torch.einsum("tbk,sbk->ts", t.float(), log_p) / s.shape[1]


def dino_loss(student: Views, teacher: Views, student_temp: float = 0.1) -> Tensor:
    """DINO v1 loss: mean over pairs (teacher view i, student view v) with v != i.

    Student global view i is the crop of teacher view i, so that pair is skipped; DINO
    averages over the ``T * S - T`` remaining pairs (``main_dino.py`` ``DINOLoss``).

    Args:
        student: student outputs, each view (B, K): ``global_`` the T crops the teacher saw
            (DINO: 2), ``local`` the others (DINO: 10).
        teacher: teacher targets, T global views (B, K) in the order of ``student.global_``.
        student_temp: T_s > 0.

    Returns:
        Scalar float32 loss.
    """
    n_teacher, n_student = len(teacher.all), len(student.all)
    if len(student.global_) != n_teacher or teacher.local:
        raise ValueError(
            f"the teacher has {len(teacher.global_)} global and {len(teacher.local)} local views, "
            f"the student {len(student.global_)} global: the teacher's views are the student's global views"
        )
    if n_student < 2:
        raise ValueError(f"the student needs >= 2 views to have a pair v != i, got {n_student}")
    ce = dino_cross_entropy_matrix(student, teacher, student_temp)
    same_view = torch.eye(n_teacher, n_student, dtype=torch.bool, device=ce.device)
    n_pairs = n_teacher * n_student - n_teacher
    return ce.masked_fill(same_view, 0.0).sum() / n_pairs
