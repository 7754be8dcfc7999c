import pytest
import torch

from ssl_zoo.models.backbones import Backbone


def tiny_vit(**kwargs):
    return Backbone(
        "vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, embed_dim=32, num_heads=2,
        dynamic_img_size=True, **kwargs,
    )


def test_vit_gives_cls_and_patch_tokens_at_any_crop_size():
    backbone = tiny_vit()
    out = backbone(torch.randn(3, 3, 32, 32))
    assert out["cls"].shape == (3, 32)
    assert out["patch"].shape == (3, 64, 32)
    local = backbone(torch.randn(3, 3, 16, 16))  # local crop: 4x4 tokens
    assert local["patch"].shape == (3, 16, 32)
    assert backbone.patch_size == 4 and backbone.has_patch_tokens


def test_cnn_has_no_patch_tokens_and_small_stem_keeps_resolution():
    plain = Backbone("resnet10t")
    small = Backbone("resnet10t", small_image_stem=True)
    no_pool = Backbone("resnet10t", stem_max_pool=False)
    x = torch.randn(2, 3, 32, 32)
    assert plain(x)["patch"] is None and plain(x)["cls"].shape == (2, 512)
    assert not plain.has_patch_tokens
    maps = {}
    for name, model in (("plain", plain), ("small", small), ("no_pool", no_pool)):
        maps[name] = model.model.forward_features(x).shape[-1]
    assert maps == {"plain": 1, "small": 4, "no_pool": 2}
    with pytest.raises(ValueError, match="backbone.stem_max_pool=false needs a ResNet-style stem"):
        Backbone("vit_tiny_patch16_224", stem_max_pool=False)


def test_mask_token_replaces_exactly_the_masked_patches():
    torch.manual_seed(0)
    backbone = tiny_vit()
    backbone.enable_mask_token("dinov2")
    torch.nn.init.normal_(backbone.mask_token, std=1.0)
    seen = {}
    backbone.model.patch_embed.register_forward_hook(lambda m, i, o: seen.setdefault("tokens", o))
    x = torch.randn(2, 3, 32, 32)
    masks = torch.zeros(2, 64, dtype=torch.bool)
    masks[0, :10] = True
    backbone.eval()
    backbone(x, masks=masks)
    tokens = seen["tokens"].reshape(2, 64, -1)
    clean = backbone.model.patch_embed(x).reshape(2, 64, -1)  # no masks set: untouched
    assert torch.allclose(tokens[0, :10], backbone.mask_token[0].expand(10, -1))
    assert torch.allclose(tokens[0, 10:], clean[0, 10:])
    assert torch.allclose(tokens[1], clean[1])
    # The mask token receives gradient only through masked positions.
    backbone(x, masks=masks)["patch"].sum().backward()
    assert backbone.mask_token.grad is not None and backbone.mask_token.grad.abs().sum() > 0


def test_mask_token_on_a_cnn_names_backbone_and_method():
    with pytest.raises(ValueError, match=r"method=dinov2.*backbone=resnet10t"):
        Backbone("resnet10t").enable_mask_token("dinov2")


def test_unknown_timm_model_is_a_clear_error():
    with pytest.raises(Exception, match="not_a_model"):
        Backbone("not_a_model")


def test_drop_path_is_a_ramp_by_default_and_uniform_on_request():
    ramp = Backbone("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=4, drop_path_rate=0.3)
    assert drop_path_rates(ramp) == pytest.approx([0.0, 0.1, 0.2, 0.3])  # timm / DINO: linear
    uniform = Backbone("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=4, drop_path_rate=0.3,
                       drop_path_uniform=True)
    assert drop_path_rates(uniform) == pytest.approx([0.3] * 4)  # DINOv2 drop_path_uniform
    assert all(b.drop_path2.drop_prob == pytest.approx(0.3) for b in uniform.model.blocks)
    # the rate is really applied: in training mode a block's residual branch is dropped
    # for some samples
    block = uniform.model.blocks[0]
    block.train()
    out = block.drop_path1(torch.ones(2000, 1, 1))
    assert 0.2 < (out == 0).float().mean().item() < 0.4


def test_uniform_drop_path_on_a_model_of_no_known_family_is_a_clear_error():
    with pytest.raises(ValueError, match="drop_path_uniform=true needs the residual blocks.*'regnetx_002'"):
        Backbone("regnetx_002", drop_path_rate=0.1, drop_path_uniform=True)


def drop_path_rates(backbone: Backbone) -> list[float]:
    return [backbone.adapter.drop_path_rate(block) for block in backbone.blocks()]
