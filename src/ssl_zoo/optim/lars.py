"""LARS: layer-wise adaptive rate scaling (You et al. 2017), as BYOL trains with it.

For each parameter ``w`` with gradient ``g`` in a group with weight decay ``wd``:

    u = g + wd * w
    u = u * trust_ratio          (only for parameters that adapt, see below)
    m = momentum * m + u
    w = w - lr * m

Two trust ratios, a named choice (``optim.optimizer.trust_ratio``):

- ``byol`` (default): ``eta * |w| / |g + wd w|``, the norm of the decayed update
  (deepmind-research byol/utils/optimizers.py ``scale_by_lars``, after
  ``add_weight_decay``), 1 when either norm is 0;
- ``lars_paper``: ``eta * |w| / (|g| + wd |w|)``, the sum of the norms (You et al. 2017,
  eq. 6; timm's ``Lars``).

BYOL excludes biases and normalisation weights from both weight decay and adaptation
(``exclude_bias_and_norm``). Here a group adapts when its ``wd_multiplier`` is non-zero:
ssl_zoo's parameter groups put biases and norm weights (every parameter of one dimension)
in the zero-decay group, so the two rules pick the same tensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ssl_zoo.errors import ConfigError

TRUST_RATIOS = ("byol", "lars_paper")


class LARS(torch.optim.Optimizer):
    """Args:
    params: parameters or groups; a group with ``wd_multiplier == 0`` is not adapted.
    lr: learning rate (optim.schedule sets it every step).
    momentum: heavy-ball momentum on the adapted update (BYOL 0.9).
    weight_decay: L2 coefficient added to the gradient before adaptation.
    eta: trust coefficient (BYOL 1e-3).
    trust_ratio: ``byol`` or ``lars_paper`` (module docstring).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
        trust_ratio: str = "byol",
    ) -> None:
        for key, value, ok, expected in (
            ("lr", lr, lr >= 0, ">= 0"),
            ("momentum", momentum, 0 <= momentum < 1, "in [0, 1)"),
            ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
            ("eta", eta, eta > 0, "> 0"),
            ("trust_ratio", trust_ratio, trust_ratio in TRUST_RATIOS, f"one of {TRUST_RATIOS}"),
        ):
            if not ok:
                raise ConfigError(f"optim.optimizer.{key} must be {expected}, got {value!r}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                    "trust_ratio": trust_ratio}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            adapt = group.get("wd_multiplier", 1.0) != 0
            wd, eta = group["weight_decay"], group["eta"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                update = grad.add(param, alpha=wd) if wd else grad.clone()
                if adapt:
                    param_norm = torch.linalg.vector_norm(param)
                    if group["trust_ratio"] == "byol":
                        denominator = torch.linalg.vector_norm(update)
                    else:
                        denominator = torch.linalg.vector_norm(grad) + wd * param_norm
                    ratio = torch.where(
                        (param_norm > 0) & (denominator > 0), eta * param_norm / denominator, torch.ones_like(param_norm)
                    )
                    update.mul_(ratio)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                param.add_(buffer, alpha=-group["lr"])
        return loss
