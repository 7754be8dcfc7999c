"""What ssl_zoo needs to know of a timm model's layout: one adapter per family, chosen by
the built model's class (never guessed from its name).

An adapter declares, for a model of its family:

- ``blocks``: the residual blocks in depth order. Stochastic depth is set per block
  (``drop_path_attrs`` names the block attributes that hold its ``DropPath``) and
  layer-wise lr decay numbers the parameters by these blocks;
- ``shard_units``: what FSDP2 gathers one at a time (default: the blocks);
- ``decay_blocks``: the blocks layer-wise lr decay counts (default: the blocks; none: every
  parameter keeps the full lr);
- ``patch_size``: the side in pixels of the patch tokens the model outputs (the iBOT mask
  grid), None without patch tokens.

Layer ids follow from the declared blocks (:meth:`BackboneAdapter.layer_ids`): block i is
layer i + 1; what runs before the first block (patch / stem embeddings, class and register
tokens, position embeddings) is layer 0; what runs between two blocks (a stage's
downsampling) belongs to the block it feeds; what runs after the last block (final norm)
is layer L + 1. "Before" and "after" are timm's registration order, which is the order of
the forward for every family below. For a ViT this is BEiT's / DINOv2's rule.

A family is added here: a subclass that declares the above for its timm classes, and one
entry in ``ADAPTERS``. A model of no known family trains, with no blocks: no uniform drop
path, no layer decay, no FSDP2.
"""

from __future__ import annotations

from timm.layers import DropPath
from timm.models.convnext import ConvNeXt
from timm.models.eva import Eva
from timm.models.resnet import ResNet
from timm.models.swin_transformer import SwinTransformer
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class BackboneAdapter:
    """A family of timm models; this base is the family of unknown ones (no blocks)."""

    family = "other"
    classes: tuple[type[nn.Module], ...] = ()
    drop_path_attrs: tuple[str, ...] = ()

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return []

    def shard_units(self, model: nn.Module) -> list[nn.Module]:
        return self.blocks(model)

    def decay_blocks(self, model: nn.Module) -> list[nn.Module]:
        return self.blocks(model)

    def patch_size(self, model: nn.Module) -> int | None:
        return None

    def drop_path_rate(self, block: nn.Module) -> float:
        """The block's stochastic-depth rate (0 without a DropPath)."""
        drop_path = getattr(block, self.drop_path_attrs[0], None) if self.drop_path_attrs else None
        return float(drop_path.drop_prob) if isinstance(drop_path, DropPath) else 0.0

    def set_drop_path(self, block: nn.Module, rate: float) -> None:
        """Give every residual branch of ``block`` the stochastic-depth rate ``rate``."""
        for attr in self.drop_path_attrs:
            setattr(block, attr, DropPath(rate) if rate > 0 else nn.Identity())

    def layer_ids(self, model: nn.Module) -> dict[str, int]:
        """Each parameter name of ``model`` -> its layer id (module docstring)."""
        blocks = self.decay_blocks(model)
        module_names = {id(module): name for name, module in model.named_modules()}
        owner = {}
        for index, block in enumerate(blocks):
            prefix = module_names[id(block)]
            owner.update({f"{prefix}.{name}": index for name, _ in block.named_parameters()})
        ids: dict[str, int] = {}
        waiting: list[str] = []  # outside every block, until the next block shows where they run
        for name, _ in model.named_parameters():
            index = owner.get(name)
            if index is None:
                waiting.append(name)
                continue
            ids.update(dict.fromkeys(waiting, 0 if index == 0 else index + 1))
            waiting = []
            ids[name] = index + 1
        ids.update(dict.fromkeys(waiting, len(blocks) + 1))
        return ids


class ViTAdapter(BackboneAdapter):
    """timm's VisionTransformer (DeiT, DINO, DINOv2 and register models) and EVA."""

    family = "vit"
    classes = (VisionTransformer, Eva)
    drop_path_attrs = ("drop_path1", "drop_path2")

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.blocks)

    def patch_size(self, model: nn.Module) -> int | None:
        size = model.patch_embed.patch_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)


class SwinAdapter(BackboneAdapter):
    """Swin v1 / v2: stages (``layers``) of window-attention blocks, each stage after the
    first opening with a patch merging. No patch tokens at the output (merged 8x)."""

    family = "swin"
    classes = (SwinTransformer, SwinTransformerV2)
    drop_path_attrs = ("drop_path1", "drop_path2")

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return [block for stage in model.layers for block in stage.blocks]


class ConvNeXtAdapter(BackboneAdapter):
    """ConvNeXt: a patchify stem, then stages that open with a downsampling (from the
    second on) followed by ConvNeXt blocks, each with one residual branch."""

    family = "convnext"
    classes = (ConvNeXt,)
    drop_path_attrs = ("drop_path",)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return [block for stage in model.stages for block in stage.blocks]


class ResNetAdapter(BackboneAdapter):
    """ResNet: BasicBlocks / Bottlenecks in four stages ``layer1..4``."""

    family = "resnet"
    classes = (ResNet,)
    drop_path_attrs = ("drop_path",)

    def stages(self, model: nn.Module) -> list[nn.Module]:
        return [model.layer1, model.layer2, model.layer3, model.layer4]

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return [block for stage in self.stages(model) for block in stage]

    def shard_units(self, model: nn.Module) -> list[nn.Module]:
        # A stage per unit: a ResNet's blocks are small (resnet10t has one per stage).
        return self.stages(model)

    def decay_blocks(self, model: nn.Module) -> list[nn.Module]:
        # No layer decay: no ResNet recipe uses one, and ssl_zoo never applied one to them.
        return []


ADAPTERS: tuple[BackboneAdapter, ...] = (ViTAdapter(), SwinAdapter(), ConvNeXtAdapter(), ResNetAdapter())


def adapter_for(model: nn.Module) -> BackboneAdapter:
    """The adapter of ``model``'s family (by class); the no-blocks base for any other."""
    for adapter in ADAPTERS:
        if isinstance(model, adapter.classes):
            return adapter
    return BackboneAdapter()
