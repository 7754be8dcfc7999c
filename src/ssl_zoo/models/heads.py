"""Projection heads.

DINOHead (Caron et al. 2021, sec. 3.1 and appendix): an MLP (GELU, optional BatchNorm)
down to an L2-normalised bottleneck, then a weight-normalised linear layer to K prototypes
without bias. With ``norm_last_layer`` the weight-norm magnitude is fixed to 1, which the
paper found stabilises training of ViT-S.

MLPHead (Grill et al. 2020, sec. 3.3): BYOL's projector and predictor,
Linear -> BatchNorm -> ReLU -> Linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, n_layers: int, use_bn: bool, act: type[nn.Module],
         output_bias: bool = True) -> nn.Sequential:
    if n_layers < 1:
        raise ValueError(f"head n_layers must be >= 1, got {n_layers}")
    if n_layers == 1:
        return nn.Sequential(nn.Linear(in_dim, out_dim, bias=output_bias))
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(n_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim))
        if use_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(act())
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=output_bias))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """(B, in_dim) -> (B, out_dim) prototype scores (before any temperature).

    Defaults from the DINO reference config: 3 layers, hidden 2048, bottleneck 256,
    65536 prototypes for ImageNet (we default to 4096 for small runs; set ``out_dim``).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 4096,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("out_dim", out_dim), ("hidden_dim", hidden_dim), ("bottleneck_dim", bottleneck_dim)):
            if value < 1:
                raise ValueError(f"head {name} must be >= 1, got {value}")
        self.mlp = _mlp(in_dim, hidden_dim, bottleneck_dim, n_layers, use_bn, nn.GELU)
        self.apply(_trunc_normal_init)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        magnitude.data.fill_(1.0)
        if norm_last_layer:
            magnitude.requires_grad_(False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.mlp(features)
        # eps 1e-6 in fp32 would underflow to 0 in fp16: normalise in fp32.
        x = F.normalize(x.float(), dim=-1, eps=1e-6)
        # The prototype scores are cosines that the losses divide by 0.1 (student) and 0.04
        # (teacher): bf16's 8-bit mantissa (~0.004 on a cosine) would become ~0.04-0.1 on a
        # logit. Under autocast they stay fp32, a small GEMM (docs/precision.md). Parameters
        # that are bf16 themselves (FSDP2 param_dtype) are used as given.
        weight_dtype = self.last_layer.parametrizations.weight.original1.dtype
        with torch.autocast(x.device.type, enabled=False):
            return self.last_layer(x.to(weight_dtype))


class MLPHead(nn.Module):
    """BYOL projector / predictor: Linear(in, hidden) -> BN -> ReLU -> Linear(hidden, out).
    Paper values: hidden 4096, out 256. ``output_bias=False`` drops the last layer's bias,
    as BYOL's reference MLP does (deepmind-research byol/utils/networks.py: the second
    ``hk.Linear`` has ``with_bias=False``)."""

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256, n_layers: int = 2,
                 output_bias: bool = True) -> None:
        super().__init__()
        self.mlp = _mlp(in_dim, hidden_dim, out_dim, n_layers, use_bn=True, act=nn.ReLU, output_bias=output_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


def _trunc_normal_init(module: nn.Module) -> None:
    # DINO initialises head linears with trunc_normal(std=0.02) and zero bias.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
