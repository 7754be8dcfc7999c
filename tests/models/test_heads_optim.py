import pytest
import torch

from ssl_zoo.models.backbones import Backbone
from ssl_zoo.models.heads import DINOHead, MLPHead
from ssl_zoo.optim.param_groups import build_param_groups


def test_dino_head_last_layer_is_weight_normalised_with_fixed_norm():
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8)
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 32)
    weight = head.last_layer.weight
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(32))
    magnitude = head.last_layer.parametrizations.weight.original0
    assert not magnitude.requires_grad
    assert DINOHead(16, 32, norm_last_layer=False).last_layer.parametrizations.weight.original0.requires_grad


def test_mlp_head_shape():
    assert MLPHead(16, hidden_dim=32, out_dim=8)(torch.randn(4, 16)).shape == (4, 8)


def test_param_groups_decay_flags_and_layer_decay():
    backbone = Backbone("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=3, embed_dim=32, num_heads=2)
    head = DINOHead(32, 16, 16, 8)
    named = [(f"student.backbone.{n}", p) for n, p in backbone.named_parameters()]
    named += [(f"student.head.{n}", p) for n, p in head.named_parameters()]
    groups = build_param_groups(named, layer_decay=0.9, num_layers=3, patch_embed_lr_mult=0.2,
                                backbone_prefix="student.backbone.", layer_id=backbone.layer_id)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["student.backbone.model.blocks.0.attn.qkv.bias"]["wd_multiplier"] == 0.0
    assert by_name["student.backbone.model.blocks.0.norm1.weight"]["wd_multiplier"] == 0.0
    assert by_name["student.backbone.model.blocks.0.attn.qkv.weight"]["wd_multiplier"] == 1.0
    assert by_name["student.backbone.model.blocks.2.mlp.fc1.weight"]["lr_multiplier"] == pytest.approx(0.9)
    assert by_name["student.backbone.model.blocks.0.mlp.fc1.weight"]["lr_multiplier"] == pytest.approx(0.9**3)
    assert by_name["student.backbone.model.patch_embed.proj.weight"]["lr_multiplier"] == pytest.approx(0.2 * 0.9**4)
    assert by_name["student.head.mlp.0.weight"]["lr_multiplier"] == 1.0
    assert by_name["student.head.last_layer.parametrizations.weight.original1"]["is_last_layer"]
    # frozen parameters (the fixed weight-norm magnitude) are not optimised at all
    assert "student.head.last_layer.parametrizations.weight.original0" not in by_name
    assert backbone.layer_id("model.cls_token") == 0 and backbone.layer_id("model.norm.weight") == 4
    with pytest.raises(ValueError, match="layer_decay < 1 needs layer_id"):
        build_param_groups(named, layer_decay=0.9, num_layers=3, backbone_prefix="student.backbone.")
