"""Position embeddings at another resolution, as DINO and DINOv2 compute them.

``backbone.pos_embed_interpolation``:

- ``official``: the rule of ``interpolate_pos_encoding`` (facebookresearch/dino
  vision_transformer.py:174-194 at 7c446df; facebookresearch/dinov2
  dinov2/models/vision_transformer.py:180-212 at b8931f7, with ``interpolate_offset: 0.1``
  and ``interpolate_antialias: false`` from configs/ssl_default_config.yaml:84-85). At every forward the stored
  grid (M x M patch positions, whatever grid the weights came with) is resampled
  bicubically to the crop's h x w patches with ``scale_factor=((h + 0.1) / M, (w + 0.1) / M)``
  and no antialiasing, in float32. torch maps output pixels to input coordinates with the
  given scale factor, so the 0.1 offset changes the values, not only the rounding: a
  smooth 14x14 field resampled to 6x6 differs by 7-8% (relative L2) from timm's rule. No
  resampling when the crop is square and has as many patches as the stored grid. ViTs
  with registers follow DINOv2's register releases instead (``hub/backbones.py:107-108``,
  ``configs/eval/*_reg4_pretrain.yaml``: ``interpolate_offset=0``,
  ``interpolate_antialias=True``, i.e. bicubic to ``size=(h, w)`` with antialiasing).
  Pretrained weights keep their own grid (``ssl_zoo.weights.official``): a DINOv2 release
  stores 37x37 positions (518 px) and every crop size is interpolated from them, as the
  official model does.
- ``timm``: timm's ``resample_abs_pos_embed`` (bicubic to ``size=(h, w)``, antialiased, from
  the model's own grid; pretrained grids are resampled once at loading).

The official rule replaces only timm's ``VisionTransformer._pos_embed`` (a subclass the
built model is switched to); patch embedding, tokens, blocks and norm stay timm's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

MODES = ("official", "timm")
#: interpolate_offset of DINO (hard-coded) and DINOv2 (ssl_default_config.yaml: student.interpolate_offset).
OFFSET = 0.1


def interpolate_patch_positions(
    positions: torch.Tensor, stored: tuple[int, int], grid: tuple[int, int], offset: float = OFFSET, antialias: bool = False
) -> torch.Tensor:
    """(1, M*M', D) positions of a stored M x M' grid -> (1, h*w, D) for an h x w grid, in
    float32. ``offset`` > 0: ``scale_factor=((h + offset) / M, (w + offset) / M')`` (the
    official rule); 0: ``size=(h, w)``."""
    dim = positions.shape[-1]
    field = positions.float().reshape(1, stored[0], stored[1], dim).permute(0, 3, 1, 2)
    if offset:
        scale = ((grid[0] + offset) / stored[0], (grid[1] + offset) / stored[1])
        field = F.interpolate(field, scale_factor=scale, mode="bicubic", align_corners=False, antialias=antialias)
    else:
        field = F.interpolate(field, size=grid, mode="bicubic", align_corners=False, antialias=antialias)
    if tuple(field.shape[-2:]) != tuple(grid):  # the official code asserts the same
        raise ValueError(f"position grid {stored[0]}x{stored[1]} resampled to {tuple(field.shape[-2:])}, not {grid}")
    return field.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)


class OfficialPosEmbedViT(VisionTransformer):
    """timm's VisionTransformer whose position step follows DINO / DINOv2 (module
    docstring). Only ``_pos_embed`` differs; state dict and parameters are timm's."""

    @property
    def pos_embed_rule(self) -> tuple[float, bool]:
        """(interpolate_offset, interpolate_antialias) of the official model of this layout."""
        return (0.0, True) if getattr(self, "num_reg_tokens", 0) else (OFFSET, False)

    def stored_grid(self) -> tuple[int, int]:
        """The grid of patch positions held in ``pos_embed``."""
        n_prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        stored = self.pos_embed.shape[1] - n_prefix
        grid = tuple(int(g) for g in self.patch_embed.grid_size)
        if grid[0] * grid[1] == stored:
            return grid
        side = math.isqrt(stored)
        if side * side != stored:
            raise ValueError(f"pos_embed holds {stored} patch positions: not a square grid")
        return side, side

    def store_positions(self, length: int) -> None:
        """Hold ``length`` positions (prefix included; a pretrained square grid), which every
        forward interpolates from. New values are zeros: load weights after."""
        if length == self.pos_embed.shape[1]:
            return
        stored = length - (0 if self.no_embed_class else self.num_prefix_tokens)
        side = math.isqrt(max(stored, 0))
        if side == 0 or side * side != stored:
            raise ValueError(f"{length} positions: not a square grid of patch positions after the prefix tokens")
        self.pos_embed = nn.Parameter(self.pos_embed.detach().new_zeros(1, length, self.pos_embed.shape[-1]))

    def positions_for(self, grid: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """``pos_embed`` for an h x w patch grid (prefix positions unchanged)."""
        stored = self.stored_grid()
        # official: `if npatch == N and w == h: return self.pos_embed` (w, h in pixels); the
        # same as grid == stored for images whose sides are multiples of the patch, which
        # timm's patch embedding requires.
        if grid == stored:
            return self.pos_embed
        n_prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        pos = self.pos_embed.float()
        offset, antialias = self.pos_embed_rule
        patches = interpolate_patch_positions(pos[:, n_prefix:], stored, grid, offset, antialias)
        # DINOv2 casts back to the tokens' dtype (after the cat with the class token).
        return torch.cat([pos[:, :n_prefix], patches], dim=1).to(torch.promote_types(dtype, self.pos_embed.dtype))

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is None:
            return super()._pos_embed(x)
        if self.dynamic_img_size:  # (B, H, W, D) from the patch embedding
            batch, h, w, dim = x.shape
            x = x.reshape(batch, h * w, dim)
            grid = (h, w)
        else:
            grid = tuple(int(g) for g in self.patch_embed.grid_size)
        pos = self.positions_for(grid, x.dtype)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:  # no positions for prefix tokens: add, then prepend
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos
        return self.pos_drop(x)


def use_official_pos_embed(model: nn.Module, model_name: str) -> None:
    """Switch a timm ViT to the official position rule; no-op for models without
    absolute position embeddings (CNNs, Swin)."""
    if getattr(model, "pos_embed", None) is None:
        return
    if type(model) is not VisionTransformer:
        raise ValueError(
            f"backbone.pos_embed_interpolation=official replaces the position step of timm's VisionTransformer, "
            f"but '{model_name}' is a {type(model).__name__}: set backbone.pos_embed_interpolation=timm"
        )
    model.__class__ = OfficialPosEmbedViT
