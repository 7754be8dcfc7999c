"""What DINO and DINOv2 share: the teacher and how its targets are made.

Both distil an EMA teacher that sees the 2 global crops into a student that sees every
crop. Shared here: the teacher temperature schedule, the teacher-target strategy
(softmax centering or Sinkhorn-Knopp, ``ssl_zoo.losses.targets``), the teacher as the
evaluated network, heads loaded from ``head_init_from``, the step signals the callbacks
read, and the split of view-major rows into the per-view lists the losses take. Each
method keeps its own step (``compute_loss``) and heads (``build_heads``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssl_zoo.losses import SinkhornKnoppTargets, SoftmaxCentering, Views, build_teacher_targets
from ssl_zoo.methods.base import SSLMethod, _check
from ssl_zoo.methods.temperature import Temperatures
from ssl_zoo.models.backbones import Backbone
from ssl_zoo.weights.official import load_heads


class DINOFamily(SSLMethod):
    """Args:
    student_temp, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs: the
        temperatures (:class:`ssl_zoo.methods.temperature.Temperatures`), the warm-up
        counted as the subclass's reference does (``teacher_temp_per_epoch``).
    teacher_targets: ``centering`` or ``sinkhorn_knopp``.
    center_momentum: EMA of the softmax center (0.9, both references).
    sinkhorn_iterations: Sinkhorn-Knopp rounds (3, DINOv2).
    head_init_from: initial head weights (:mod:`ssl_zoo.weights.official`), loaded into
        the student's heads before the teacher copies them.
    **optim: see :class:`SSLMethod`.

    A subclass sets ``method_name`` and ``teacher_temp_per_epoch``, implements
    ``build_heads`` and ``compute_loss``, and calls ``init_networks`` at the end of its
    ``__init__``.
    """

    #: The teacher sees two global crops (both references); view i of the teacher is the
    #: crop of the student's global view i.
    n_global_views = 2
    #: The ``method=`` name, for messages and for reading heads from official files.
    method_name: str
    #: DINO's warm-up takes one value per epoch, DINOv2's one per iteration (temperature.py).
    teacher_temp_per_epoch: bool

    def __init__(
        self,
        student_temp: float,
        teacher_temp: float,
        warmup_teacher_temp: float,
        warmup_teacher_temp_epochs: float,
        teacher_targets: str,
        center_momentum: float = 0.9,
        sinkhorn_iterations: int = 3,
        head_init_from: str | None = None,
        **optim: Any,
    ) -> None:
        super().__init__(**optim)
        self.temperatures = Temperatures(
            student_temp, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs,
            per_epoch=self.teacher_temp_per_epoch,
        )
        _check("center_momentum", 0 <= center_momentum <= 1, center_momentum, "in [0, 1]")
        _check("sinkhorn_iterations", sinkhorn_iterations >= 1, sinkhorn_iterations, ">= 1")
        self.target_args = {"kind": teacher_targets, "center_momentum": center_momentum,
                            "n_iterations": sinkhorn_iterations}
        self.head_init_from = head_init_from

    # --- networks -------------------------------------------------------------------------

    def build_heads(self, backbone: Backbone) -> dict[str, nn.Module]:
        """The heads on top of ``backbone``, by the names ``compute_loss`` calls them."""
        raise NotImplementedError

    def build_student(self, backbone: Backbone) -> nn.ModuleDict:
        heads = self.build_heads(backbone)
        if self.head_init_from:  # before the teacher copy, so both start from the file
            mask_token = load_heads(self.head_init_from, heads, method=self.method_name)
            if mask_token is not None and backbone.mask_token is not None:  # none without masking
                backbone.set_mask_token(mask_token)
        return nn.ModuleDict({"backbone": backbone, **heads})

    def new_targets(self, out_dim: int, center_reduction: str = "global_mean") -> SoftmaxCentering | SinkhornKnoppTargets:
        """The configured teacher-target strategy for a head of ``out_dim`` prototypes (one
        per head: a center is a head's own)."""
        return build_teacher_targets(out_dim=out_dim, center_reduction=center_reduction, **self.target_args)

    def check_views(self, n_global: int, n_local: int) -> None:
        if n_global != self.n_global_views:
            raise ValueError(
                f"augmentation.n_global must be {self.n_global_views} for {type(self).__name__} "
                f"(the teacher sees the {self.n_global_views} global crops), got {n_global}"
            )

    @property
    def eval_backbone(self) -> nn.Module:
        return self.teacher["backbone"]  # the teacher is the one reported (Caron et al. 2021, sec. 3.1)

    # --- the step -------------------------------------------------------------------------

    def teacher_temp_at(self, step: int) -> float:
        return self.temperatures.teacher_at(step, self.steps_per_epoch)

    def split_views(self, rows: torch.Tensor, global_crops: torch.Tensor) -> Views:
        """View-major rows of this step's crops (the global views first) as the losses take
        them: one (B, ...) slice per view, B images per view as in ``global_crops``."""
        return Views.from_rows(rows, global_crops.shape[0] // self.n_global_views, self.n_global_views)

    def record_teacher_signals(
        self, student_features: torch.Tensor, teacher_features: torch.Tensor, teacher_probs: torch.Tensor,
        targets: SoftmaxCentering | SinkhornKnoppTargets,
    ) -> None:
        """The step signals of the family (``SSLMethod.STEP_SIGNALS``): the student's and
        teacher's CLS features and the teacher's CLS targets of the global crops, plus the
        center when the targets are centred."""
        self.record_signals(student_features=student_features, eval_features=teacher_features,
                            teacher_probs=teacher_probs)
        if isinstance(targets, SoftmaxCentering):
            self.record_signals(center=targets.center)

    def teacher_logs(self, step: int, teacher_temp: float) -> dict[str, float]:
        return {"teacher_temp": teacher_temp, "teacher_momentum": self.momentum_at(step)}
