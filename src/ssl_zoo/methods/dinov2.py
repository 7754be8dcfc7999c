"""DINOv2 (Oquab et al. 2023, arXiv:2304.07193), the image + patch objective.

On top of DINO's CLS self-distillation: an iBOT masked-patch loss (the student sees
global crops with block-wise masked patches replaced by a learnable mask token; the
teacher sees them unmasked and provides targets at the masked positions) and a KoLeo
regulariser on the student backbone's CLS features of each global view. Teacher targets
by softmax centering (separate centers for CLS and patches) or Sinkhorn-Knopp, the same
strategy object for both heads. Masks and their weights arrive with the batch (collate).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssl_zoo.losses import MaskedPatches, dinov2_objective
from ssl_zoo.methods.base import _check
from ssl_zoo.methods.dino_family import DINOFamily
from ssl_zoo.models.backbones import Backbone
from ssl_zoo.models.heads import DINOHead


class DINOv2(DINOFamily):
    """Defaults follow dinov2/configs/ssl_default_config.yaml unless noted.

    Args:
        out_dim, ibot_out_dim: prototypes of the DINO and iBOT heads (65536 each in the
            reference; smaller here for small data).
        hidden_dim, bottleneck_dim, head_layers: both heads (2048, 256, 3).
        separate_ibot_head: a second head for patches, or one
            shared head for CLS and patch tokens (the reference default, ibot.separate_head false).
        student_temp: 0.1. teacher_temp / warmup_teacher_temp /
            warmup_teacher_temp_epochs: 0.07 / 0.04 / 30, warmed up per iteration.
        teacher_targets: ``centering`` (the reference default) or ``sinkhorn_knopp``.
        center_momentum: 0.9; sinkhorn_iterations: 3.
        patch_center_reduction: across processes, the iBOT patch center's batch mean is
            ``mean_of_process_means`` (the reference: each GPU's mean over its masked
            patches, then the mean over GPUs) or ``global_mean`` (over all masked patches);
            the same on one process.
        dino_weight, ibot_weight, koleo_weight: 1.0, 1.0, 0.1.
        head_init_from: initial head weights: an official DINOv2 ``dino_head`` /
            ``ibot_head`` (teacher's by default), a DINO head, or an ``ssl-zoo export ...
            head=true`` file, whose iBOT mask token also initialises the backbone's
            (:mod:`ssl_zoo.weights.official`).
        momentum_teacher: 0.992 (cosine to 1).
        **optim: see :class:`SSLMethod`; the reference uses layer_decay 0.9,
            patch_embed_lr_mult 0.2, freeze_last_layer_epochs 1, epochs of 1250
            iterations and gradients clipped per student submodule (the default here).

    The heads' last layers keep a trainable weight-norm magnitude (initialised to 1), as
    in dinov2 ``layers/dino_head.py``; DINO v1 fixes it (``norm_last_layer``).
    """

    method_name = "dinov2"
    teacher_temp_per_epoch = False  # DINOv2's CosineScheduler: one value per iteration

    def __init__(
        self,
        backbone: Backbone,
        out_dim: int = 4096,
        ibot_out_dim: int = 4096,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_layers: int = 3,
        separate_ibot_head: bool = False,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: float = 30.0,
        teacher_targets: str = "centering",
        center_momentum: float = 0.9,
        sinkhorn_iterations: int = 3,
        patch_center_reduction: str = "mean_of_process_means",
        dino_weight: float = 1.0,
        ibot_weight: float = 1.0,
        koleo_weight: float = 0.1,
        head_init_from: str | None = None,
        **optim: Any,
    ) -> None:
        super().__init__(student_temp, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs,
                         teacher_targets, center_momentum, sinkhorn_iterations, head_init_from, **optim)
        _check("dino_weight", dino_weight > 0, dino_weight, "> 0 (the CLS term is DINOv2's core)")
        _check("ibot_weight", ibot_weight >= 0, ibot_weight, ">= 0 (0 disables the iBOT term)")
        _check("koleo_weight", koleo_weight >= 0, koleo_weight, ">= 0 (0 disables KoLeo)")
        if not separate_ibot_head and ibot_out_dim != out_dim:
            raise ValueError(
                f"method.ibot_out_dim={ibot_out_dim} differs from method.out_dim={out_dim} but "
                "method.separate_ibot_head=false shares one head: make them equal"
            )
        # iBOT needs patch tokens; without it (ibot_weight 0) DINOv2's image-level objective
        # (DINO terms, KoLeo, its schedules and clipping) also runs on a CNN.
        self.uses_masks = ibot_weight > 0 or backbone.has_patch_tokens
        if ibot_weight > 0 and not backbone.has_patch_tokens:
            raise ValueError(
                f"method=dinov2 with method.ibot_weight={ibot_weight}: the iBOT term needs patch tokens, but "
                f"backbone={backbone.model_name} has none (a CNN): choose a ViT (e.g. backbone=vit_mini), "
                "or keep only DINOv2's image-level objective with method.ibot_weight=0 augmentation.masking=null"
            )
        self.weights = {"dino_weight": dino_weight, "ibot_weight": ibot_weight, "koleo_weight": koleo_weight}
        self.head_dims = {"hidden_dim": hidden_dim, "bottleneck_dim": bottleneck_dim, "n_layers": head_layers,
                          "norm_last_layer": False}
        self.head_out_dims = {"dino_head": out_dim, **({"ibot_head": ibot_out_dim} if separate_ibot_head else {})}
        self.init_networks(backbone)
        self.cls_targets = self.new_targets(out_dim)
        try:
            self.patch_targets = self.new_targets(ibot_out_dim, center_reduction=patch_center_reduction)
        except ValueError as err:
            raise ValueError(f"method.patch_center_reduction: {err}") from None

    def build_student(self, backbone: Backbone) -> nn.ModuleDict:
        if self.uses_masks:
            backbone.enable_mask_token("dinov2")
        return super().build_student(backbone)

    def build_heads(self, backbone: Backbone) -> dict[str, nn.Module]:
        return {name: DINOHead(backbone.embed_dim, dim, **self.head_dims) for name, dim in self.head_out_dims.items()}

    @staticmethod
    def _heads(net: nn.ModuleDict, cls: torch.Tensor, patches: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CLS and masked-patch logits; one head call over both when the head is shared."""
        if patches is None:
            return net["dino_head"](cls), None
        if "ibot_head" in net:
            return net["dino_head"](cls), net["ibot_head"](patches)
        logits = net["dino_head"](torch.cat((cls, patches)))
        return logits[: cls.shape[0]], logits[cls.shape[0] :]

    def compute_loss(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        global_crops, local_crops = batch["global_crops"], batch["local_crops"]
        masks = batch.get("masks")  # (2B, N) bool, from the collate; None without iBOT
        if masks is None and self.uses_masks:
            raise ValueError(
                "the batch has no iBOT masks: set augmentation.masking (the dinov2 augmentation "
                "has it), or method.ibot_weight=0 on a CNN"
            )
        teacher_temp = self.teacher_temp_at(step)

        with torch.no_grad(), self.teacher_precision():
            teacher_out = self.teacher["backbone"](global_crops)
            t_cls, t_patch = self._heads(self.teacher, teacher_out["cls"], _masked(teacher_out, masks))
            t_cls_probs = self.cls_targets.targets(t_cls, teacher_temp)
            t_patch_probs = self.patch_targets.targets(t_patch, teacher_temp) if masks is not None else None

        student_global = self.student["backbone"](global_crops, masks=masks)
        cls_features = student_global["cls"]
        if local_crops is not None:
            cls_features = torch.cat((cls_features, self.student["backbone"](local_crops)["cls"]))
        s_cls, s_patch = self._heads(self.student, cls_features, _masked(student_global, masks))
        patches = None if masks is None else MaskedPatches.from_masks(s_patch, t_patch_probs, masks, batch["mask_weights"])
        terms = dinov2_objective(
            self.split_views(s_cls, global_crops),
            self.split_views(t_cls_probs, global_crops),
            self.split_views(student_global["cls"], global_crops),
            patches,
            student_temp=self.temperatures.student,
            **self.weights,
        )
        self.cls_targets.update(t_cls)
        if masks is not None:
            self.patch_targets.update(t_patch)
        self.record_teacher_signals(student_global["cls"], teacher_out["cls"], t_cls_probs, self.cls_targets)
        logs = {f"{name}_loss": value.detach() for name, value in terms.items() if name != "total"}
        # DINO's definition (mean cross-entropy over the view pairs, before dino_weight), so
        # one panel compares train/dino_loss across the family; the split stays as extra terms.
        logs["dino_loss"] = (terms["dino_local"] + terms["dino_global"]).detach() / self.weights["dino_weight"]
        logs.update(self.teacher_logs(step, teacher_temp),
                    masked_patch_fraction=masks.float().mean() if masks is not None else 0.0)
        return terms["total"], logs


def _masked(backbone_out: dict[str, torch.Tensor | None], masks: torch.Tensor | None) -> torch.Tensor | None:
    """(M, D) patch tokens at the masked positions; None without masks."""
    return None if masks is None else backbone_out["patch"][masks]
