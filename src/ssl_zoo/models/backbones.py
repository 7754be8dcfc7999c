"""timm backbones behind one small interface (wrapped, never forked).

`Backbone(x, masks=None)` returns a dict with
- ``cls``: (B, D) the image feature (ViT: class token after the final norm, or timm's
  pooling when the model has none; CNN: globally pooled features);
- ``patch``: (B, N, D) patch tokens for ViTs, ``None`` for CNNs.

ViTs are created with ``dynamic_img_size=True`` so that global and local crops of
different resolutions pass through the same weights (position embeddings interpolated by
DINO / DINOv2's rule or timm's: :mod:`ssl_zoo.models.pos_embed`). Stochastic depth is
per sample or DINOv2's batch subset (:mod:`ssl_zoo.models.stochastic_depth`).
iBOT/DINOv2 masking is a forward hook on the ViT's patch embedding that swaps masked
patch embeddings for a learnable mask token: the timm forward stays untouched.
What ssl_zoo knows of the model's layout (blocks for drop path, FSDP2 units and layer
decay; the patch grid) comes from its family's adapter (:mod:`ssl_zoo.models.adapters`).
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from ssl_zoo.models.adapters import adapter_for
from ssl_zoo.models.conv_precision import guard_small_input_convs
from ssl_zoo.models.pos_embed import MODES as POS_EMBED_MODES
from ssl_zoo.models.pos_embed import OfficialPosEmbedViT, use_official_pos_embed
from ssl_zoo.models.stochastic_depth import MODES as DROP_PATH_MODES
from ssl_zoo.models.stochastic_depth import use_subset_drop_path


class Backbone(nn.Module):
    """A timm model without its classifier.

    Args:
        model_name: any timm model name, e.g. ``resnet10t``, ``vit_small_patch16_224``.
        small_image_stem: for ResNets on ~32 px images: stride 1 in the first stem conv
            and no max-pool (as CIFAR ResNets do), so the last stage keeps a 4x4 map
            instead of collapsing to 1x1.
        stem_max_pool: false drops only the stem's max-pool (stride 2 stays): at 32 px the
            last map is 2x2 instead of 1x1, for ~2x the compute (``small_image_stem``
            costs ~10x). ResNet-style stems only.
        drop_path_uniform: every residual block (the adapter's ``blocks``) gets ``drop_path_rate`` (DINOv2's
            ``drop_path_uniform``) instead of timm's linear ramp from 0 at the first
            block to ``drop_path_rate`` at the last (DINO's rule).
        pos_embed_interpolation: ``official`` (DINO / DINOv2's ``interpolate_pos_encoding``:
            bicubic, ``scale_factor=(n + 0.1) / M``, no antialiasing, from the stored grid)
            or ``timm`` (``resample_abs_pos_embed``: ``size=n``, antialiased). ViTs only.
        drop_path_mode: ``per_sample`` (timm's DropPath, DINO) or ``subset`` (DINOv2: each
            residual branch on exactly int(B * (1 - rate)) samples, scaled). ViTs only.
        **model_kwargs: passed to ``timm.create_model`` (e.g. ``img_size``,
            ``patch_size``, ``depth``, ``drop_path_rate``, ``init_values`` for layer
            scale, ``dynamic_img_size``).
    """

    def __init__(
        self,
        model_name: str,
        small_image_stem: bool = False,
        stem_max_pool: bool = True,
        drop_path_uniform: bool = False,
        pos_embed_interpolation: str = "official",
        drop_path_mode: str = "per_sample",
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        for key, value, modes in (("pos_embed_interpolation", pos_embed_interpolation, POS_EMBED_MODES),
                                  ("drop_path_mode", drop_path_mode, DROP_PATH_MODES)):
            if value not in modes:
                raise ValueError(f"backbone.{key}={value!r}: choose one of {', '.join(modes)}")
        try:
            self.model = timm.create_model(model_name, pretrained=False, num_classes=0, **model_kwargs)
        except (RuntimeError, TypeError) as err:
            raise ValueError(
                f"backbone: timm could not create '{model_name}' with {model_kwargs}: {err}"
            ) from err
        self.adapter = adapter_for(self.model)
        self.embed_dim: int = self.model.num_features
        self.num_prefix_tokens: int = getattr(self.model, "num_prefix_tokens", 0)
        self.patch_size: int | None = self.adapter.patch_size(self.model)
        if small_image_stem or not stem_max_pool:
            _change_resnet_stem(self.model, model_name, stride_one=small_image_stem)
        if drop_path_uniform:
            self._make_drop_path_uniform(float(model_kwargs.get("drop_path_rate", 0.0)))
        if pos_embed_interpolation == "official":
            use_official_pos_embed(self.model, model_name)
        if drop_path_mode == "subset":
            use_subset_drop_path(self.blocks(), model_name)
        # bf16 on CPU: fp32 for the small-input convolutions oneDNN gets wrong (docs/precision.md).
        guard_small_input_convs(self.model)
        # Layer decay: taken once the model is final (the parameter names do not change after).
        self.num_layers = len(self.adapter.decay_blocks(self.model))
        self._layer_ids = self.adapter.layer_ids(self.model)
        self.mask_token: nn.Parameter | None = None
        self._masks: torch.Tensor | None = None
        self._init_mask_token: torch.Tensor | None = None

    def enable_mask_token(self, method: str) -> None:
        """Add a learnable mask token for masked image modelling (iBOT, DINOv2)."""
        if not self.has_patch_tokens:
            raise ValueError(
                f"method={method} masks patch tokens, but backbone={self.model_name} has none "
                "(a CNN): choose a ViT backbone, e.g. backbone=vit_tiny or backbone=vit_small"
            )
        if self.mask_token is None:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
            self.model.patch_embed.register_forward_hook(self._apply_mask_token)
            if self._init_mask_token is not None:
                self.set_mask_token(self._init_mask_token)

    def init_mask_token(self, value: torch.Tensor) -> None:
        """Pretrained mask-token values (1, 1, D) (``ssl_zoo.weights.initial``): copied
        into the token now if it is enabled, else when ``enable_mask_token`` enables it."""
        self._init_mask_token = value
        if self.mask_token is not None:
            self.set_mask_token(value)

    def set_mask_token(self, value: torch.Tensor) -> None:
        """Copy pretrained mask-token values (shape (1, 1, D)) into the enabled token."""
        if self.mask_token is None:
            raise ValueError("set_mask_token: enable_mask_token() was never called on this backbone")
        if value.numel() != self.embed_dim:
            raise ValueError(f"mask token of {value.numel()} values for a backbone of width {self.embed_dim}")
        with torch.no_grad():
            self.mask_token.copy_(value.reshape(1, 1, -1))

    def blocks(self) -> list[nn.Module]:
        """The residual blocks in depth order (each with its own drop-path rate)."""
        return self.adapter.blocks(self.model)

    def shard_units(self) -> list[nn.Module]:
        """What FSDP2 shards one at a time, each all-gathered only while it runs (a ViT's
        blocks, a ResNet's stages: the family's adapter says). Empty for a model of no
        known family."""
        return self.adapter.shard_units(self.model)

    def layer_id(self, name: str) -> int:
        """The layer-decay depth of parameter ``name`` of this module (``model.*`` or
        ``mask_token``): 0 for the embeddings and the mask token, i + 1 for block i,
        ``num_layers + 1`` after the blocks (:mod:`ssl_zoo.models.adapters`)."""
        if name == "mask_token":
            return 0
        return self._layer_ids[name.removeprefix("model.")]

    def patch_grid(self, image_size: int) -> tuple[int, int] | None:
        """Patch tokens per side (rows, columns) of a square ``image_size`` crop, None
        without patch tokens (the iBOT mask grid)."""
        if not self.has_patch_tokens:
            return None
        return image_size // self.patch_size, image_size // self.patch_size

    def store_positions(self, length: int) -> bool:
        """Make ``model.pos_embed`` hold ``length`` positions (a pretrained grid the official
        rule interpolates from at every forward, as the official models do). Returns False
        (nothing changed) under ``pos_embed_interpolation=timm``, where pretrained grids are
        resampled to the model's once, at loading."""
        if not isinstance(self.model, OfficialPosEmbedViT):
            return False
        self.model.store_positions(length)
        return True

    @property
    def has_patch_tokens(self) -> bool:
        return self.patch_size is not None

    def _make_drop_path_uniform(self, rate: float) -> None:
        blocks = self.blocks()
        if not blocks or not self.adapter.drop_path_attrs:
            raise ValueError(
                f"backbone.drop_path_uniform=true needs the residual blocks of the model, but '{self.model_name}' "
                "is of no family ssl_zoo knows (ssl_zoo/models/adapters.py): set backbone.drop_path_uniform=false"
            )
        # timm builds a linear ramp (block 0 gets an Identity); give every block the same rate.
        for block in blocks:
            self.adapter.set_drop_path(block, rate)

    def _apply_mask_token(self, module: nn.Module, inputs: Any, tokens: torch.Tensor) -> torch.Tensor:
        masks = self._masks
        if masks is None:
            return tokens
        # tokens are (B, N, D), or (B, H, W, D) when timm keeps the grid for dynamic sizes.
        masks = masks.reshape(*tokens.shape[:-1], 1)
        return torch.where(masks, self.mask_token.to(tokens.dtype).expand_as(tokens), tokens)

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        """Args: images (B, 3, H, W); masks (B, N) bool, True = replace that patch."""
        if masks is not None and self.mask_token is None:
            raise ValueError("masks given but enable_mask_token() was never called on this backbone")
        self._masks = masks
        try:
            tokens = self.model.forward_features(images)
        finally:
            self._masks = None
        cls = self.model.forward_head(tokens, pre_logits=True)
        patch = tokens[:, self.num_prefix_tokens :] if self.has_patch_tokens else None
        return {"cls": cls, "patch": patch}


def _change_resnet_stem(model: nn.Module, model_name: str, stride_one: bool) -> None:
    conv1 = getattr(model, "conv1", None)
    first_conv = conv1[0] if isinstance(conv1, nn.Sequential) else conv1
    if not isinstance(first_conv, nn.Conv2d) or not hasattr(model, "maxpool"):
        key = "backbone.small_image_stem=true" if stride_one else "backbone.stem_max_pool=false"
        raise ValueError(
            f"{key} needs a ResNet-style stem (conv1 + maxpool); '{model_name}' has none: "
            "leave the stem options at their defaults (small_image_stem=false, stem_max_pool=true)."
        )
    if stride_one:
        first_conv.stride = (1, 1)
    model.maxpool = nn.Identity()
