"""Convolutions whose bf16 weight gradient is wrong on CPU run in fp32 instead.

oneDNN's bf16 weight-gradient kernel for ``conv2d`` (torch 2.14.1, AMD EPYC with
avx512_bf16) returns garbage, non-finite in most trials and finite but wrong by orders of
magnitude in others, when a padded kernel is larger than its input: a 3x3 stride-2
convolution on a 1x1 map (what resnet10t's ``layer4.0.conv1`` sees at 32 px), 5x5 or 7x7
kernels on 1x1 / 2x2 maps. The forward pass and the input gradient are right; unpadded
convolutions, depthwise convolutions and inputs at least as large as the kernel were
right in every trial (sweep and upstream repro: docs/precision.md).

The policy: a convolution with padding whose input is smaller than its kernel along a
spatial axis runs in fp32 (forward and backward) when it would otherwise run in bf16 on
CPU with gradients. That is a small-map layer, cheap in any precision; everything else
keeps bf16. :func:`guard_small_input_convs` installs it on a model's ``nn.Conv2d``
layers by swapping their class for a subclass (same parameters, same state-dict keys).
Remove it once the repro in docs/precision.md passes on the torch in use.
"""

from __future__ import annotations

import torch
from torch import nn


def bf16_kernel_unsafe(conv: nn.Conv2d, inputs: torch.Tensor) -> bool:
    """Whether ``conv`` on ``inputs`` would run oneDNN's faulty bf16 weight-gradient kernel."""
    if inputs.device.type != "cpu" or not torch.is_grad_enabled():
        return False
    if not (inputs.requires_grad or conv.weight.requires_grad):
        return False
    if torch.is_autocast_enabled("cpu"):
        compute_dtype = torch.get_autocast_dtype("cpu")
    else:
        compute_dtype = inputs.dtype
    if compute_dtype != torch.bfloat16:
        return False
    padding = _padding(conv)
    spatial = inputs.shape[-2:]
    return any(pad > 0 and size < kernel for size, kernel, pad in zip(spatial, conv.kernel_size, padding))


def _padding(conv: nn.Conv2d) -> tuple[int, ...]:
    if conv.padding == "valid":
        return (0,) * len(conv.kernel_size)
    if conv.padding == "same":
        return tuple(k // 2 for k in conv.kernel_size)
    return tuple(conv.padding)


class SmallInputFp32Conv:
    """Mixin placed before a ``nn.Conv2d`` class: the fp32 route for unsafe inputs."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not bf16_kernel_unsafe(self, inputs):
            return super().forward(inputs)
        with torch.autocast("cpu", enabled=False):
            if _conv_class(self).forward is nn.Conv2d.forward:
                # Parameters may themselves be bf16 (FSDP2 param_dtype): cast them too.
                bias = None if self.bias is None else self.bias.float()
                out = self._conv_forward(inputs.float(), self.weight.float(), bias)
            else:  # a conv class with its own forward (timm's StdConv2d, Conv2dSame)
                out = super().forward(inputs.float())
        # Under autocast the next layer casts as it likes; without it keep the caller's dtype.
        return out if torch.is_autocast_enabled("cpu") else out.to(inputs.dtype)


def _conv_class(conv: nn.Module) -> type:
    """The convolution class the mixin was put in front of."""
    mro = type(conv).__mro__
    return mro[mro.index(SmallInputFp32Conv) + 1]


class GuardedConv2d(SmallInputFp32Conv, nn.Conv2d):
    """``nn.Conv2d`` with the fp32 route (a named class: modules holding it pickle)."""


_GUARDED: dict[type, type] = {nn.Conv2d: GuardedConv2d}


def guard_small_input_convs(model: nn.Module) -> None:
    """Give every ``nn.Conv2d`` in ``model`` the fp32 route for unsafe inputs."""
    for module in model.modules():
        cls = type(module)
        if not isinstance(module, nn.Conv2d) or isinstance(module, SmallInputFp32Conv):
            continue
        if cls not in _GUARDED:
            _GUARDED[cls] = type(f"Guarded{cls.__name__}", (SmallInputFp32Conv, cls), {"__module__": __name__})
        module.__class__ = _GUARDED[cls]
