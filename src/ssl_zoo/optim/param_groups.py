"""Optimizer parameter groups.

Every group carries multipliers that the per-step schedules apply
(lr = lr_schedule(step) * lr_multiplier, weight decay = wd_schedule(step) * wd_multiplier):
- no weight decay on biases, norms, layer-scale gammas and other 1-d tensors (DINO,
  following the common practice since Goyal et al. 2017);
- layer-wise lr decay (DINOv2 ``layerwise_decay``; BEiT, Bao et al. 2021): a parameter at
  layer id d of L gets decay ** (L + 1 - d), e.g. block i (d = i + 1) decay ** (L - i) and
  the embeddings (d = 0) decay ** (L + 1); the backbone gives the ids (its ``layer_id``);
- an lr multiplier for the patch embedding (DINOv2 ``patch_embed_lr_mult`` 0.2);
- the head's last layer flagged so it can be frozen for the first steps (DINO).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ssl_zoo.parallel.collectives import full_norms, local_tensor


def build_param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    layer_decay: float = 1.0,
    num_layers: int = 0,
    patch_embed_lr_mult: float = 1.0,
    backbone_prefix: str = "backbone.",
    layer_id: Callable[[str], int] | None = None,
) -> list[dict]:
    """Group trainable parameters by (lr multiplier, wd multiplier, is_last_layer).

    ``layer_decay`` and ``patch_embed_lr_mult`` apply to names starting with
    ``backbone_prefix`` only; heads keep multiplier 1. ``layer_id`` maps a backbone
    parameter name (without the prefix) to its depth in [0, num_layers + 1] for layer
    decay (:meth:`ssl_zoo.models.backbones.Backbone.layer_id`); needed when layer_decay < 1.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    if layer_decay < 1.0 and layer_id is None:
        raise ValueError("layer_decay < 1 needs layer_id, the backbone's depth of each parameter")
    if patch_embed_lr_mult < 0:
        raise ValueError(f"patch_embed_lr_mult must be >= 0, got {patch_embed_lr_mult}")
    groups: dict[tuple[float, float, bool], dict] = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        lr_mult = 1.0
        if name.startswith(backbone_prefix):
            if layer_decay < 1.0:
                lr_mult *= layer_decay ** (num_layers + 1 - layer_id(name[len(backbone_prefix):]))
            if "patch_embed" in name:
                lr_mult *= patch_embed_lr_mult
        no_decay = param.ndim < 2 or name.endswith(".bias") or "norm" in name or "gamma" in name
        wd_mult = 0.0 if no_decay else 1.0
        is_last_layer = "last_layer" in name
        key = (lr_mult, wd_mult, is_last_layer)
        group = groups.setdefault(
            key,
            {"params": [], "names": [], "lr_multiplier": lr_mult, "wd_multiplier": wd_mult, "is_last_layer": is_last_layer},
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


@torch.no_grad()
def clip_grad_norm_per_parameter(params: Iterable[nn.Parameter], max_norm: float) -> None:
    """Scale each parameter's gradient to L2 norm <= ``max_norm``, independently.

    DINO's ``utils.clip_gradients``: coefficient ``max_norm / (norm + 1e-6)``, applied
    only where it is < 1. Parameters without a gradient are skipped. Norms are of whole
    gradients, also when FSDP2 shards them (:func:`ssl_zoo.parallel.collectives.full_norms`)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    coefs = (max_norm / (full_norms(grads) + 1e-6)).clamp_(max=1.0)
    torch._foreach_mul_([local_tensor(g) for g in grads], list(coefs.unbind()))


def clip_grad_norm_total(params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale all gradients together so that their total L2 norm is <= ``max_norm``, with
    the arithmetic of ``torch.nn.utils.clip_grad_norm_`` (coefficient
    ``max_norm / (norm + 1e-6)`` clamped to 1), on plain or FSDP2-sharded gradients.
    Returns the total norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = full_norms(grads).square().sum().sqrt()
    coef = (max_norm / (total + 1e-6)).clamp_(max=1.0)
    torch._foreach_mul_([local_tensor(g) for g in grads], coef)
    return total


def clip_grad_norm_per_module(modules: Iterable[nn.Module], max_norm: float) -> None:
    """Clip the total gradient norm of each module separately (DINOv2 calls
    ``clip_grad_norm_`` on each student submodule: backbone, dino head, ibot head)."""
    for module in modules:
        clip_grad_norm_total(module.parameters(), max_norm)
