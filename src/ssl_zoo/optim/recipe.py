"""The ``optim`` config node: which optimizer, its schedule, its parameter groups and how
gradients are clipped, built once from Hydra and handed to the method.

    optim:
      _target_: ssl_zoo.optim.recipe.OptimRecipe
      optimizer: {_target_: torch.optim.AdamW, _partial_: true, betas: [0.9, 0.999]}
      schedule: {_target_: ssl_zoo.optim.schedules.Schedule, base_lr: 5.0e-4, ...}
      layer_decay: 1.0
      grad_clip: 3.0

The optimizer is a ``_partial_``: any ``torch.optim`` class (or ssl_zoo's ``LARS``) that
takes parameter groups. Its lr and weight decay are not configured there: the schedule
sets them on every group at every step (times the group's multipliers).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ssl_zoo.errors import ConfigError, UserError
from ssl_zoo.optim.param_groups import (
    build_param_groups,
    clip_grad_norm_per_module,
    clip_grad_norm_per_parameter,
    clip_grad_norm_total,
)
from ssl_zoo.optim.run_plan import RunPlan
from ssl_zoo.optim.schedules import Schedule

CLIP_MODES = ("per_parameter", "per_module", "global")


def _check(key: str, ok: bool, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"optim.{key} must be {expected}, got {value}")


class OptimRecipe:
    """Args:
    optimizer: partial of the optimizer class, called with the parameter groups.
    schedule: the lr / weight-decay schedule (:class:`~ssl_zoo.optim.schedules.Schedule`).
    layer_decay: ViT layer-wise lr decay (DINOv2 0.9; 1.0 disables), see param_groups.
    patch_embed_lr_mult: lr multiplier of the patch embedding (DINOv2 0.2).
    grad_clip: gradient-norm threshold (0 disables).
    grad_clip_mode: ``per_parameter`` (DINO ``utils.clip_gradients``: each tensor's
        gradient to norm <= grad_clip), ``per_module`` (DINOv2: each student submodule,
        e.g. backbone and heads, clipped as a whole) or ``global`` (one norm over all).
    """

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        schedule: Schedule | None = None,
        layer_decay: float = 1.0,
        patch_embed_lr_mult: float = 1.0,
        grad_clip: float = 0.0,
        grad_clip_mode: str = "global",
    ) -> None:
        optimizer = optimizer if optimizer is not None else functools.partial(torch.optim.AdamW)
        preset = getattr(optimizer, "keywords", {}) or {}
        fixed = sorted({"lr", "weight_decay"} & preset.keys())
        _check("optimizer", callable(optimizer) and not fixed, f"{optimizer!r}",
               "a _partial_ optimizer without lr / weight_decay (optim.schedule sets them every step)")
        _check("layer_decay", 0 < layer_decay <= 1, layer_decay, "in (0, 1]")
        _check("patch_embed_lr_mult", patch_embed_lr_mult >= 0, patch_embed_lr_mult, ">= 0")
        _check("grad_clip", grad_clip >= 0, grad_clip, ">= 0 (0 disables clipping)")
        _check("grad_clip_mode", grad_clip_mode in CLIP_MODES, grad_clip_mode, f"one of {CLIP_MODES}")
        self.optimizer = optimizer
        self.schedule = schedule if schedule is not None else Schedule()
        self.layer_decay = layer_decay
        self.patch_embed_lr_mult = patch_embed_lr_mult
        self.grad_clip = grad_clip
        self.grad_clip_mode = grad_clip_mode

    def plan(self, run: RunPlan) -> None:
        self.schedule.plan(run.total_steps, run.steps_per_data_epoch, run.global_batch_size, run.images_per_epoch)

    def build(self, named_params: Iterable[tuple[str, nn.Parameter]], layer_id: Callable[[str], int] | None,
              num_layers: int, backbone_prefix: str) -> torch.optim.Optimizer:
        """The optimizer over the trainable parameters, grouped by lr / wd multipliers."""
        groups = build_param_groups(
            named_params,
            layer_decay=self.layer_decay,
            num_layers=num_layers,
            patch_embed_lr_mult=self.patch_embed_lr_mult,
            backbone_prefix=backbone_prefix,
            layer_id=layer_id,
        )
        groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
        try:
            return self.optimizer(groups, lr=self.schedule.peak_lr, weight_decay=0.0)
        except UserError:
            raise
        except (ValueError, TypeError) as err:
            # The optimizer's own check of an optim.optimizer value (torch's "Invalid
            # momentum value", an unknown keyword): built inside trainer.fit, so say which key.
            target = getattr(self.optimizer, "func", self.optimizer)
            name = f"{target.__module__}.{target.__qualname__}" if hasattr(target, "__qualname__") else repr(target)
            message = str(err)
            raise ConfigError(message if message.startswith("optim.") else f"optim.optimizer ({name}): {message}") from err

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> tuple[float, float]:
        """Set every group's lr and weight decay for ``step``; returns the base (lr, wd)."""
        schedule = self.schedule
        lr, wd, last_layer_lr = schedule.lr_at(step), schedule.wd_at(step), schedule.last_layer_lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = (last_layer_lr if group["is_last_layer"] else lr) * group["lr_multiplier"]
            group["weight_decay"] = wd * group["wd_multiplier"]
        return lr, wd

    def clip(self, parameters: Iterable[nn.Parameter], modules: Iterable[nn.Module], max_norm: float | None = None) -> None:
        """Clip gradients in place by ``grad_clip_mode`` (``modules``: the per-module units)."""
        clip = self.grad_clip if max_norm is None else max_norm
        if not clip:
            return
        if self.grad_clip_mode == "global":
            clip_grad_norm_total(parameters, clip)
        elif self.grad_clip_mode == "per_parameter":
            clip_grad_norm_per_parameter(parameters, clip)
        else:
            clip_grad_norm_per_module(modules, clip)
