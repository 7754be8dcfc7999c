"""BYOL: bootstrap your own latent (Grill et al. 2020, arXiv:2006.07733).

The online network (backbone -> projector -> predictor) predicts the target network's
projection of the other view; the target (backbone -> projector) is an EMA of the online
one. Loss: 2 - 2 cos(p, z') for both orderings of the two views (the paper's L + L~).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssl_zoo.losses import byol_loss
from ssl_zoo.methods.base import SSLMethod, _check
from ssl_zoo.models.backbones import Backbone
from ssl_zoo.models.ema import reinitialize_
from ssl_zoo.models.heads import MLPHead

TARGET_INITS = ("copy", "independent")


class BYOL(SSLMethod):
    """Args (paper values, sec. 3.3 and appendix J):
    projector_hidden_dim, projector_out_dim: 4096, 256.
    predictor_hidden_dim: 4096.
    momentum_teacher: target EMA momentum at step 0, cosine to 1 (0.996).
    output_bias: bias on the last linear layer of projector and predictor (the reference
        has none: deepmind-research byol/utils/networks.py ``MLP``).
    batchnorm_per_view: run each view through the networks on its own, so BatchNorm
        normalises each view with its own statistics, as the reference applies the
        network once per view (byol_experiment.py ``apply_once_fn``); ``false`` runs both
        views as one batch (one forward, statistics pooled over the two views).
    target_init: ``copy`` (the target starts as the online network's copy) or
        ``independent`` (fresh weights of the same scheme, as the reference initialises
        the target with its own random key; it notes no significant difference,
        byol_experiment.py ``_make_initial_state``).
    head_init_from: must stay null: BYOL has no official PyTorch head release to load.
    **optim: see :class:`SSLMethod` (paper: LARS, base lr 0.2, weight decay 1.5e-6).
    """

    def __init__(
        self,
        backbone: Backbone,
        projector_hidden_dim: int = 4096,
        projector_out_dim: int = 256,
        predictor_hidden_dim: int = 4096,
        output_bias: bool = False,
        batchnorm_per_view: bool = True,
        target_init: str = "copy",
        head_init_from: str | None = None,
        **optim: Any,
    ) -> None:
        if head_init_from:
            raise ValueError(
                f"method.head_init_from={head_init_from}: BYOL has no official PyTorch head "
                "release (DINO / DINOv2 heads do not fit its projector); initialise only the "
                "backbone with backbone.init_from=... and leave method.head_init_from=null"
            )
        super().__init__(**optim)
        for key, value in (("projector_hidden_dim", projector_hidden_dim), ("projector_out_dim", projector_out_dim),
                           ("predictor_hidden_dim", predictor_hidden_dim)):
            _check(key, value >= 1, value, ">= 1")
        _check("target_init", target_init in TARGET_INITS, target_init, f"one of {TARGET_INITS}")
        self.projector_dims = (projector_hidden_dim, projector_out_dim)
        self.output_bias = output_bias
        self.batchnorm_per_view = batchnorm_per_view
        self.init_networks(backbone)
        if target_init == "independent":
            reinitialize_(self.teacher)
        # The online network's alone: the target network has no predictor.
        self.predictor = MLPHead(projector_out_dim, predictor_hidden_dim, projector_out_dim, output_bias=output_bias)

    def build_student(self, backbone: Backbone) -> nn.ModuleDict:
        projector = MLPHead(backbone.embed_dim, *self.projector_dims, output_bias=self.output_bias)
        return nn.ModuleDict({"backbone": backbone, "projector": projector})

    def check_views(self, n_global: int, n_local: int) -> None:
        if n_global != 2 or n_local != 0:
            raise ValueError(
                "BYOL uses exactly two views: set augmentation.transform.n_global=2 and "
                f"augmentation.transform.n_local=0 (got {n_global} and {n_local})"
            )

    def compute_loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        views = batch["global_crops"]  # (2B, C, H, W): [view 1; view 2]
        # Per view, BatchNorm sees B images of one view; together, 2B of both.
        chunks = views.chunk(2) if self.batchnorm_per_view else (views,)
        with torch.no_grad(), self.teacher_precision():
            targets = torch.cat([self.teacher["projector"](self.teacher["backbone"](x)["cls"]) for x in chunks])
        features = torch.cat([self.student["backbone"](x)["cls"] for x in chunks])
        projections = torch.cat([self.student["projector"](f) for f in features.chunk(len(chunks))])
        predictions = torch.cat([self.predictor(z) for z in projections.chunk(len(chunks))])
        self.record_signals(student_features=features, eval_features=features)  # eval_backbone: the student
        p1, p2 = predictions.chunk(2)
        z1, z2 = targets.chunk(2)
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        return loss, {"byol_loss": loss.detach(), "teacher_momentum": self.momentum_at(step)}
