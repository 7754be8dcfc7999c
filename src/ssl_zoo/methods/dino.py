"""DINO: self-distillation with no labels (Caron et al. 2021, arXiv:2104.14294).

The student (backbone + DINO head) sees 2 global and N local crops; the EMA teacher sees
the 2 global crops. Teacher outputs are centred and sharpened (softmax centering with an
EMA center, or Sinkhorn-Knopp), and the student matches them with a cross-entropy over
every (teacher view, other student view) pair.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssl_zoo.losses import dino_loss
from ssl_zoo.methods.dino_family import DINOFamily
from ssl_zoo.models.backbones import Backbone
from ssl_zoo.models.heads import DINOHead


class DINO(DINOFamily):
    """Defaults are the DINO ViT-S/16 reference values (main_dino.py) unless noted.

    Args:
        out_dim: prototypes K (paper 65536; 4096 is plenty for small data).
        hidden_dim, bottleneck_dim, head_layers, head_use_bn, norm_last_layer: DINO head.
        student_temp: 0.1.
        teacher_temp: final teacher temperature (0.04; 0.07 for longer runs).
        warmup_teacher_temp, warmup_teacher_temp_epochs: linear warm-up of the teacher
            temperature from this value over this many whole epochs, one value per epoch
            as in main_dino.py (0.04 over 30 in the paper's longer runs).
        teacher_targets: ``centering`` (the paper) or ``sinkhorn_knopp``.
        center_momentum: EMA of the center (0.9).
        head_init_from: initial head weights: an official DINO head (a DINO training
            checkpoint, teacher's by default), a DINOv2 ``dino_head``, or an ``ssl-zoo
            export ... head=true`` file (:mod:`ssl_zoo.weights.official`).
        momentum_teacher: EMA momentum at step 0, raised to 1 with a cosine (0.996).
        **optim: see :class:`SSLMethod`; gradients are clipped per parameter
            (``grad_clip_mode=per_parameter``) and the frozen last layer gets no
            gradient, as in main_dino.py.
    """

    method_name = "dino"
    teacher_temp_per_epoch = True  # main_dino.py: one value per epoch
    cancel_frozen_last_layer_grads = True

    def __init__(
        self,
        backbone: Backbone,
        out_dim: int = 4096,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_layers: int = 3,
        head_use_bn: bool = False,
        norm_last_layer: bool = True,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: float = 0.0,
        teacher_targets: str = "centering",
        center_momentum: float = 0.9,
        head_init_from: str | None = None,
        **optim: Any,
    ) -> None:
        super().__init__(student_temp, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs,
                         teacher_targets, center_momentum, head_init_from=head_init_from, **optim)
        self.head_args = (out_dim, hidden_dim, bottleneck_dim, head_layers, head_use_bn, norm_last_layer)
        self.init_networks(backbone)
        self.targets = self.new_targets(out_dim)

    def build_heads(self, backbone: Backbone) -> dict[str, nn.Module]:
        return {"head": DINOHead(backbone.embed_dim, *self.head_args)}

    def compute_loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        global_crops, local_crops = batch["global_crops"], batch["local_crops"]
        teacher_temp = self.teacher_temp_at(step)
        with torch.no_grad(), self.teacher_precision():
            teacher_features = self.teacher["backbone"](global_crops)["cls"]
            teacher_logits = self.teacher["head"](teacher_features)
            teacher_probs = self.targets.targets(teacher_logits, teacher_temp)
        # The backbone runs once per resolution; the head once over every crop.
        features = [self.student["backbone"](global_crops)["cls"]]
        if local_crops is not None:
            features.append(self.student["backbone"](local_crops)["cls"])
        student_logits = self.student["head"](torch.cat(features))
        loss = dino_loss(self.split_views(student_logits, global_crops), self.split_views(teacher_probs, global_crops),
                         student_temp=self.temperatures.student)
        self.targets.update(teacher_logits)
        self.record_teacher_signals(features[0], teacher_features, teacher_probs, self.targets)
        return loss, {"dino_loss": loss.detach(), **self.teacher_logs(step, teacher_temp)}
