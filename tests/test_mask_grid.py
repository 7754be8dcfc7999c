"""The iBOT mask grid comes from the built backbone (no guess from the config)."""

from __future__ import annotations

import pytest

from ssl_zoo.errors import ConfigError
from ssl_zoo.train import build_all
from tests.conftest import TINY_DATA, TINY_VIT

QUIET = ["callbacks.knn=null", "callbacks.progress=null", "callbacks.checkpoint=null", "~logger"]
DINOV2 = [*TINY_DATA, *TINY_VIT, *QUIET, "method=dinov2", "method.out_dim=64", "method.hidden_dim=32",
          "method.bottleneck_dim=16"]


@pytest.mark.parametrize(("patch_size", "grid"), [(4, (8, 8)), (8, (4, 4))])
def test_the_mask_grid_is_the_backbones_patch_grid_of_the_global_crops(compose_cfg, patch_size, grid):
    parts = build_all(compose_cfg([*DINOV2, f"backbone.patch_size={patch_size}"]))
    backbone = parts["method"].student["backbone"]
    generator = parts["datamodule"].collate.mask_generator
    assert backbone.patch_grid(32) == grid and generator.grid_size == grid
    batch = parts["datamodule"].collate([parts["datamodule"].train_set[i] for i in range(4)])
    assert batch["masks"].shape == (2 * 4, grid[0] * grid[1])  # one mask per global crop, one entry per patch


def test_a_grid_size_that_is_not_the_backbones_is_a_clear_error(compose_cfg):
    with pytest.raises(ConfigError, match=r"grid_size=5 but the global crops have 8x8 patches.*remove that override"):
        build_all(compose_cfg([*DINOV2, "+augmentation.masking.generator.grid_size=5"]))


def test_masks_on_a_backbone_without_patch_tokens_is_a_clear_error(compose_cfg):
    overrides = [o for o in DINOV2 if "backbone" not in o]
    with pytest.raises(ConfigError, match=r"augmentation\.masking draws iBOT masks, but backbone=resnet10t has no "
                                          r"patch tokens.*augmentation\.masking=null method\.ibot_weight=0"):
        build_all(compose_cfg([*overrides, "backbone=resnet10t", "method.ibot_weight=0"]))
