"""Official weights give official features (issue #21).

Small ViTs with random weights are saved in the official state-dict layouts (DINO:
ViT/16; DINOv2: ViT/14 with layer scale and a mask token, 37x37 positions as its 518 px
releases store them; DINOv2 with registers), loaded through the real path (the composed
Hydra config with ``backbone.init_from=<file>``, built by ``ssl_zoo.train.build_backbone``),
and their CLS and patch tokens compared with the official forward re-derived in plain torch
(``tests.reference.official_vit_forward``) at 224 px, on local crops (96 px for DINO's
patch 16, 98 px for DINOv2's patch 14) and on a non-square crop. Tolerance: max abs difference <= 1e-5 in float32 (the tokens leave a
LayerNorm: O(1) values, so this is also ~1e-5 relative). timm's interpolation
(``backbone.pos_embed_interpolation=timm``) must fail that tolerance on local crops.
"""

from __future__ import annotations

import pytest
import torch

from ssl_zoo.train import build_backbone
from tests.reference import official_vit_forward, official_vit_state

TOL = 1e-5
WIDTH, HEADS, DEPTH = 192, 3, 3

# name -> (official state dict options, patch, config overrides, offset / antialias of the official model)
LAYOUTS = {
    # dino vision_transformer.py, a ViT/16 at 224 px (14x14 positions, as the releases store).
    "dino": (dict(patch=16, grid=14), 16, ["backbone.model_name=vit_small_patch16_224"], (0.1, False)),
    # dinov2 DinoVisionTransformer, a ViT/14 release: 37x37 positions (518 px), layer scale,
    # mask token; the model's own grid (224 px) is 16x16.
    "dinov2": (dict(patch=14, grid=37, layer_scale=True, mask_token=True), 14,
               ["backbone.model_name=vit_small_patch14_dinov2"], (0.1, False)),
    # dinov2 register releases (hub/backbones.py: interpolate_offset 0, interpolate_antialias true).
    "dinov2_reg4": (dict(patch=14, grid=37, layer_scale=True, mask_token=True, n_reg=4), 14,
                    ["backbone.model_name=vit_small_patch14_reg4_dinov2"], (0.0, True)),
}
# Per patch size: 224 px, the local crops (DINO 96 px; DINOv2 98 px, as its crops.local_crops_size:
# its patch embedding, like timm's, needs sides that are multiples of 14), a non-square crop.
SIZES = {16: [(224, 224), (96, 96), (224, 160)], 14: [(224, 224), (98, 98), (224, 154)]}
LOCAL = {16: 96, 14: 98}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> (official-layout file, its state dict)."""
    root = tmp_path_factory.mktemp("official")
    out = {}
    for seed, (name, (options, *_)) in enumerate(LAYOUTS.items()):
        sd = official_vit_state(width=WIDTH, depth=DEPTH, seed=seed, **options)
        path = root / f"{name}_pretrain.pth"
        torch.save(sd, path)
        out[name] = (path, sd)
    return out


def built(compose_cfg, overrides: list[str]):
    cfg = compose_cfg(["experiment=cifar10_dino", "backbone=vit_small", "data.image_size=224",
                       f"+backbone.depth={DEPTH}", f"+backbone.embed_dim={WIDTH}", f"+backbone.num_heads={HEADS}",
                       *overrides])
    return build_backbone(cfg).eval()


def max_diff(ours: dict, reference: dict) -> float:
    return max((ours[k] - reference[k]).abs().max().item() for k in ("cls", "patch"))


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_official_weights_give_official_features(name, files, compose_cfg):
    path, sd = files[name]
    _, patch, overrides, (offset, antialias) = LAYOUTS[name]
    backbone = built(compose_cfg, [*overrides, f"backbone.init_from={path}"])
    grid = LAYOUTS[name][0]["grid"]
    assert backbone.model.stored_grid() == (grid, grid)  # the file's grid is kept
    torch.manual_seed(0)
    for size in SIZES[patch]:
        images = torch.randn(2, 3, *size)
        with torch.no_grad():
            ours, reference = backbone(images), official_vit_forward(sd, images, patch, HEADS, offset, antialias)
        assert ours["patch"].shape == reference["patch"].shape
        diff = max_diff(ours, reference)
        print(f"{name} {size[0]}x{size[1]}: max abs difference {diff:.2e}")
        assert diff <= TOL, (name, size, diff)


def test_dinov2_mask_token_path_gives_official_features(files, compose_cfg):
    path, sd = files["dinov2"]
    backbone = built(compose_cfg, [*LAYOUTS["dinov2"][2], f"backbone.init_from={path}"])
    backbone.enable_mask_token("dinov2")  # the file's mask token becomes ours (iBOT masking)
    torch.manual_seed(1)
    for size in ((224, 224), (98, 98)):
        images = torch.randn(2, 3, *size)
        grid = (size[0] // 14) * (size[1] // 14)
        masks = torch.rand(2, grid) < 0.4
        with torch.no_grad():
            ours = backbone(images, masks=masks)
            reference = official_vit_forward(sd, images, 14, HEADS, masks=masks)
        assert max_diff(ours, reference) <= TOL
        with torch.no_grad():  # the masks matter: unmasked features differ
            assert (backbone(images)["patch"] - reference["patch"]).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["dino", "dinov2"])
def test_timm_interpolation_fails_the_tolerance_on_local_crops(name, files, compose_cfg):
    path, sd = files[name]
    _, patch, overrides, (offset, antialias) = LAYOUTS[name]
    backbone = built(compose_cfg, [*overrides, f"backbone.init_from={path}", "backbone.pos_embed_interpolation=timm"])
    torch.manual_seed(0)
    diffs = {}
    for side in (224, LOCAL[patch]):
        images = torch.randn(2, 3, side, side)
        with torch.no_grad():
            diffs[side] = max_diff(backbone(images), official_vit_forward(sd, images, patch, HEADS, offset, antialias))
    print(f"{name}, timm interpolation: max abs difference 224 px {diffs[224]:.2e}, "
          f"{LOCAL[patch]} px {diffs[LOCAL[patch]]:.2e}")
    assert diffs[224] <= TOL  # at the training grid both resample the file's grid the same way, once
    assert diffs[LOCAL[patch]] > 100 * TOL  # local crops: size=n with antialias is not the official rule


def test_no_interpolation_at_the_stored_grid(files, compose_cfg):
    path, _ = files["dino"]
    model = built(compose_cfg, [*LAYOUTS["dino"][2], f"backbone.init_from={path}"]).model
    assert model.positions_for((14, 14), torch.float32) is model.pos_embed  # the parameter itself
    assert model.positions_for((6, 6), torch.float32).shape == (1, 1 + 36, WIDTH)


def test_checkpoint_of_a_kept_grid_reloads(files, compose_cfg, tmp_path):
    """A run started from a 37x37 release keeps that grid; reloading its checkpoint (eval,
    export) into a fresh 224 px backbone takes the checkpoint's grid."""
    from ssl_zoo.models.backbones import Backbone

    path, sd = files["dinov2"]
    trained = built(compose_cfg, [*LAYOUTS["dinov2"][2], f"backbone.init_from={path}"])
    fresh = Backbone("vit_small_patch14_dinov2", img_size=224, depth=DEPTH, embed_dim=WIDTH, num_heads=HEADS,
                     dynamic_img_size=True)
    assert fresh.model.pos_embed.shape != trained.model.pos_embed.shape
    assert fresh.store_positions(trained.model.pos_embed.shape[1])
    fresh.load_state_dict(trained.state_dict())
    images = torch.randn(1, 3, 98, 98)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(images)["patch"], trained(images)["patch"])
