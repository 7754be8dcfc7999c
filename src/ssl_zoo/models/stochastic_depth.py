"""Stochastic depth of a ViT block as DINOv2 runs it (``backbone.drop_path_mode``).

- ``per_sample``: timm's ``DropPath`` (DINO's rule): each sample's residual branch is kept
  with probability 1 - rate and scaled by 1 / (1 - rate); how many are kept varies.
- ``subset`` (facebookresearch/dinov2 at b8931f7, dinov2/layers/block.py:173-194 and
  267-294): in training with any rate above 0, each residual branch (attention, then MLP,
  each drawing its own subset) runs on exactly ``max(int(B * (1 - rate)), 1)`` random
  samples of the batch and is added back to them scaled by B / subset (``index_add`` with
  ``alpha``); the other samples get no residual and no gradient through the branch. The
  expected output equals the un-dropped one; in eval the plain block. DINOv2 trains
  through the list forward (``forward_nested``: one subset per crop resolution, as ssl_zoo
  runs the backbone once per resolution), which takes subsets at every rate > 0; only
  its single-tensor ``Block.forward`` (block.py:96-111) falls back to per-sample DropPath
  at rates <= 0.1, a path its training does not take.

Only the block's forward is replaced (a subclass of timm's ``Block``); its modules and
parameter names stay timm's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import DropPath
from timm.models.vision_transformer import Block
from torch import nn

MODES = ("per_sample", "subset")


def subset_size(batch: int, rate: float) -> int:
    """Samples that get the residual branch: ``max(int(B * (1 - rate)), 1)`` (block.py:180)."""
    return max(int(batch * (1 - rate)), 1)


def add_residual_on_subset(
    x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor], rate: float, index: torch.Tensor | None = None
) -> torch.Tensor:
    """x + the residual ``branch`` computed on a random subset of the batch only.

    Args:
        x: (B, N, D) tokens.
        branch: (b, N, D) -> (b, N, D), the residual branch (norm, attention or MLP, layer scale).
        rate: drop rate; ``subset_size(B, rate)`` samples are kept.
        index: (b,) the kept samples; None draws them (``randperm``, as the reference).
    Returns (B, N, D): ``x[i] + B / b * branch(x[index])`` for i in index, ``x[i]`` otherwise.
    """
    batch = x.shape[0]
    if index is None:
        index = torch.randperm(batch, device=x.device)[: subset_size(batch, rate)]
    residual = branch(x[index])
    out = torch.index_add(x.flatten(1), 0, index, residual.flatten(1).to(x.dtype), alpha=batch / index.numel())
    return out.view_as(x)


class SubsetDropPathBlock(Block):
    """timm's ViT ``Block`` with DINOv2's subset stochastic depth (module docstring). The
    rate is the block's own (its ``drop_path1``), so ramps and uniform rates both apply."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        rate = float(self.drop_path1.drop_prob) if isinstance(self.drop_path1, DropPath) else 0.0
        if not (self.training and rate > 0.0):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None:
            raise ValueError("backbone.drop_path_mode=subset: attention masks are not supported")

        def attention(t: torch.Tensor) -> torch.Tensor:
            return self.ls1(self.attn(self.norm1(t), is_causal=is_causal))

        def mlp(t: torch.Tensor) -> torch.Tensor:
            return self.ls2(self.mlp(self.norm2(t)))

        x = add_residual_on_subset(x, attention, rate)
        return add_residual_on_subset(x, mlp, rate)


def use_subset_drop_path(blocks: list[nn.Module], model_name: str) -> None:
    """Switch timm ViT blocks to subset stochastic depth."""
    for block in blocks:
        if type(block) not in (Block, SubsetDropPathBlock):
            raise ValueError(
                f"backbone.drop_path_mode=subset needs timm's ViT Block, but '{model_name}' has "
                f"{type(block).__name__} blocks: set backbone.drop_path_mode=per_sample"
            )
        block.__class__ = SubsetDropPathBlock
    if not blocks:
        raise ValueError(
            f"backbone.drop_path_mode=subset needs the residual blocks of a ViT, but '{model_name}' has none "
            "ssl_zoo knows (ssl_zoo/models/adapters.py): set backbone.drop_path_mode=per_sample"
        )
