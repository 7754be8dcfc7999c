"""SimCLR: a simple framework for contrastive learning (Chen et al. 2020, arXiv:2002.05709).

One network (backbone -> projector), no teacher: the two views of each image are pulled
together and pushed away from every other image of the global batch by the NT-Xent loss
(ssl_zoo.losses.simclr). The kNN and probes read the backbone, before the projector
(sec. 4.2: the representation before g(.) is the better one).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssl_zoo.losses.simclr import nt_xent_loss
from ssl_zoo.methods.base import SSLMethod, _check
from ssl_zoo.models.backbones import Backbone
from ssl_zoo.models.heads import MLPHead


class SimCLR(SSLMethod):
    """Args (paper values, sec. 2 and appendix B):
    projector_hidden_dim, projector_out_dim: 2048 and 128 (the ResNet-50 width, then a
        128-d output); Linear -> BatchNorm -> ReLU -> Linear.
    temperature: NT-Xent's T (0.1 on ImageNet at batch 4096; 0.5 on CIFAR-10).
    **optim: see :class:`SSLMethod` (paper: LARS, lr 0.3 x batch / 256, weight decay 1e-6).
    """

    uses_teacher = False

    def __init__(
        self,
        backbone: Backbone,
        projector_hidden_dim: int = 2048,
        projector_out_dim: int = 128,
        temperature: float = 0.1,
        **optim: Any,
    ) -> None:
        super().__init__(**optim)
        for key, value in (("projector_hidden_dim", projector_hidden_dim), ("projector_out_dim", projector_out_dim)):
            _check(key, value >= 1, value, ">= 1")
        _check("temperature", temperature > 0, temperature, "> 0")
        self.projector_dims = (projector_hidden_dim, projector_out_dim)
        self.temperature = temperature
        self.init_networks(backbone)

    def build_student(self, backbone: Backbone) -> nn.ModuleDict:
        return nn.ModuleDict({"backbone": backbone, "projector": MLPHead(backbone.embed_dim, *self.projector_dims)})

    def check_views(self, n_global: int, n_local: int) -> None:
        if n_global != 2 or n_local != 0:
            raise ValueError(
                "SimCLR uses exactly two views: set augmentation.transform.n_global=2 and "
                f"augmentation.transform.n_local=0 (got {n_global} and {n_local})"
            )

    def compute_loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        views = batch["global_crops"]  # (2B, C, H, W): [view 1; view 2]
        features = self.student["backbone"](views)["cls"]
        self.record_signals(student_features=features, eval_features=features)  # eval_backbone: the student
        z1, z2 = self.student["projector"](features).chunk(2)
        loss = nt_xent_loss(z1, z2, self.temperature)
        return loss, {"simclr_loss": loss.detach()}
