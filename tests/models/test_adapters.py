"""Backbone adapters: blocks, FSDP2 units, layer ids and drop path declared per family."""

from __future__ import annotations

import re

import pytest
import torch
from timm.layers import DropPath

from ssl_zoo.models.adapters import (
    BackboneAdapter,
    ConvNeXtAdapter,
    ResNetAdapter,
    ViTAdapter,
    adapter_for,
)
from ssl_zoo.models.backbones import Backbone
from ssl_zoo.optim.param_groups import build_param_groups

TINY_VIT = {"img_size": 32, "patch_size": 4, "depth": 3, "embed_dim": 32, "num_heads": 2}
TINY_SWIN = {"img_size": 64, "window_size": 2, "embed_dim": 24, "depths": (1, 1, 2, 1), "num_heads": (1, 1, 1, 1)}


def beit_layer_id(name: str, num_layers: int) -> int:
    """The rule ssl_zoo applied to ViTs before the adapters (names matched, BEiT / DINOv2's
    get_layer_id_for_vit): the reference the ViT adapter must reproduce."""
    if any(key in name for key in ("pos_embed", "patch_embed", "cls_token", "reg_token", "mask_token")):
        return 0
    found = re.search(r"(?:^|\.)blocks\.(\d+)\.", name)
    return int(found.group(1)) + 1 if found else num_layers + 1


def drop_path_rates(backbone: Backbone) -> list[float]:
    return [backbone.adapter.drop_path_rate(block) for block in backbone.blocks()]


def lr_multipliers(backbone: Backbone, layer_id) -> dict[str, float]:
    named = [(f"student.backbone.{n}", p) for n, p in backbone.named_parameters()]
    groups = build_param_groups(named, layer_decay=0.9, num_layers=backbone.num_layers, patch_embed_lr_mult=0.2,
                                backbone_prefix="student.backbone.", layer_id=layer_id)
    return {name[len("student.backbone."):]: g["lr_multiplier"] for g in groups for name in g["names"]}


@pytest.mark.parametrize(
    ("model_name", "kwargs"),
    [
        ("vit_tiny_patch16_224", TINY_VIT),  # backbone=vit_tiny's layout (DINO, DINOv2 defaults)
        ("vit_small_patch14_reg4_dinov2", {"img_size": 28, "depth": 2, "init_values": 1e-5}),  # registers, layer scale
    ],
)
def test_vit_layer_ids_blocks_and_groups_are_the_name_rule_of_before(model_name, kwargs):
    backbone = Backbone(model_name, **kwargs)
    backbone.enable_mask_token("dinov2")
    assert isinstance(backbone.adapter, ViTAdapter)
    blocks = list(backbone.model.blocks)
    assert backbone.blocks() == blocks and backbone.shard_units() == blocks
    assert backbone.num_layers == len(blocks) == kwargs["depth"]
    names = [n for n, _ in backbone.named_parameters()]
    assert {n: backbone.layer_id(n) for n in names} == {n: beit_layer_id(n, len(blocks)) for n in names}
    ours = lr_multipliers(backbone, backbone.layer_id)
    assert ours == lr_multipliers(backbone, lambda n: beit_layer_id(n, len(blocks)))
    assert len(set(ours.values())) == len(blocks) + 3  # embeddings (and the patch embed x0.2), blocks, after


def test_convnext_layer_ids_follow_its_blocks_and_stages():
    backbone = Backbone("convnext_atto")  # depths (2, 2, 6, 2)
    model = backbone.model
    assert isinstance(backbone.adapter, ConvNeXtAdapter)
    blocks = [block for stage in model.stages for block in stage.blocks]
    assert backbone.blocks() == blocks and backbone.shard_units() == blocks and backbone.num_layers == 12
    assert backbone.layer_id("model.stem.0.weight") == 0
    first = 1
    for s, (stage, depth) in enumerate(zip(model.stages, (2, 2, 6, 2))):
        for j in range(depth):
            prefix = f"model.stages.{s}.blocks.{j}."
            ids = {backbone.layer_id(n) for n, _ in backbone.named_parameters() if n.startswith(prefix)}
            assert ids == {first + j}, prefix
        # a stage's downsampling runs just before its first block: the same layer
        downsample = [f"model.stages.{s}.downsample.{n}" for n, _ in stage.downsample.named_parameters()]
        assert bool(downsample) == (s > 0)
        assert {backbone.layer_id(n) for n in downsample} <= {first}
        first += depth
    assert backbone.layer_id("model.head.norm.weight") == 13  # after the last block
    # layer decay: the lr multiplier never grows from the output back to the stem
    multipliers = lr_multipliers(backbone, backbone.layer_id)
    order = [multipliers[n] for n, _ in backbone.named_parameters() if not n.endswith(".bias")]
    assert order == sorted(order) and order[0] == pytest.approx(0.9**13) and order[-1] == 1.0


def test_convnext_drop_path_is_timms_ramp_over_all_blocks_or_uniform():
    ramp = Backbone("convnext_atto", drop_path_rate=0.11)
    assert drop_path_rates(ramp) == pytest.approx(torch.linspace(0, 0.11, 12).tolist(), abs=1e-6)
    uniform = Backbone("convnext_atto", drop_path_rate=0.11, drop_path_uniform=True)
    assert drop_path_rates(uniform) == pytest.approx([0.11] * 12)
    block = uniform.blocks()[0]
    assert isinstance(block.drop_path, DropPath)
    block.train()
    x = torch.randn(256, 40, 2, 2)
    out = block(x)  # the residual branch is dropped for some samples: out == x there
    dropped = (out - x).flatten(1).abs().amax(dim=1) == 0
    assert 0 < dropped.sum() < 256


def test_resnet_shards_its_stages_and_has_no_layer_decay():
    backbone = Backbone("resnet18", drop_path_rate=0.1)
    model = backbone.model
    assert isinstance(backbone.adapter, ResNetAdapter)
    assert backbone.shard_units() == [model.layer1, model.layer2, model.layer3, model.layer4]
    assert backbone.blocks() == [*model.layer1, *model.layer2, *model.layer3, *model.layer4]
    assert drop_path_rates(backbone)[-1] == pytest.approx(0.1)  # timm's ramp over the blocks
    assert backbone.num_layers == 0
    assert set(lr_multipliers(backbone, backbone.layer_id).values()) == {1.0}  # as before the adapters
    uniform = Backbone("resnet18", drop_path_rate=0.1, drop_path_uniform=True)
    assert drop_path_rates(uniform) == pytest.approx([0.1] * 8)


def test_swin_blocks_run_through_its_stages():
    backbone = Backbone("swin_tiny_patch4_window7_224", drop_path_rate=0.1, **TINY_SWIN)
    assert backbone.adapter.family == "swin" and backbone.patch_size is None and backbone.patch_grid(64) is None
    assert len(backbone.blocks()) == backbone.num_layers == 5
    assert drop_path_rates(backbone) == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    assert backbone.layer_id("model.patch_embed.proj.weight") == 0
    assert backbone.layer_id("model.layers.1.downsample.reduction.weight") == 2  # feeds block 1 (stage 1's first)
    assert backbone.layer_id("model.layers.2.blocks.1.attn.qkv.weight") == 4
    assert backbone.layer_id("model.norm.weight") == 6
    assert backbone(torch.randn(2, 3, 64, 64))["patch"] is None


def test_the_family_comes_from_the_class_not_the_name():
    # A VisionTransformer subclass (its own position step: timm's interpolation only).
    vit = Backbone("deit_tiny_distilled_patch16_224", img_size=32, patch_size=4, depth=2, pos_embed_interpolation="timm")
    assert vit.adapter.family == "vit" and len(vit.blocks()) == 2
    other = Backbone("regnetx_002")  # has stages, but no adapter declares them
    assert type(other.adapter) is BackboneAdapter and adapter_for(other.model).family == "other"
    assert other.blocks() == [] and other.shard_units() == [] and other.num_layers == 0
    assert set(lr_multipliers(other, other.layer_id).values()) == {1.0}


def test_patch_grid_comes_from_the_built_backbone():
    assert Backbone("vit_tiny_patch16_224", **TINY_VIT).patch_grid(32) == (8, 8)
    assert Backbone("vit_tiny_patch16_224", **{**TINY_VIT, "patch_size": 8}).patch_grid(32) == (4, 4)
    assert Backbone("resnet10t").patch_grid(32) is None and Backbone("convnext_atto").patch_grid(32) is None
