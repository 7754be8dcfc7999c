"""Supervised training through the same pipeline: the ceiling an SSL method is measured
against at equal budget (same backbone, augmentation, optimizer schedule and kNN).

Not self-supervised: it reads the labels of the training set, so it needs labeled data.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssl_zoo.methods.base import SSLMethod
from ssl_zoo.models.backbones import Backbone


class Supervised(SSLMethod):
    """Backbone + linear classifier, cross-entropy on every global crop.

    Args:
        num_classes: classes of the training labels.
        **optim: see :class:`SSLMethod`.
    """

    uses_teacher = False

    def __init__(self, backbone: Backbone, num_classes: int = 10, **optim: Any) -> None:
        super().__init__(**optim)
        if num_classes < 2:
            raise ValueError(f"method.num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.init_networks(backbone)

    def build_student(self, backbone: Backbone) -> nn.ModuleDict:
        return nn.ModuleDict({"backbone": backbone, "classifier": nn.Linear(backbone.embed_dim, self.num_classes)})

    def compute_loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        crops = batch["global_crops"]  # (V*B, C, H, W), view-major
        labels = batch["labels"].repeat(crops.shape[0] // batch["labels"].shape[0])
        if labels.min() < 0:
            raise ValueError("method=supervised needs labeled training data (got label -1: unlabeled images)")
        features = self.student["backbone"](crops)["cls"]
        self.record_signals(student_features=features, eval_features=features)
        logits = self.student["classifier"](features)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return loss, {"ce_loss": loss.detach(), "top1": accuracy.detach()}
