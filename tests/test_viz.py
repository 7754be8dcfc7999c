"""Attention maps equal timm's own (unfused) attention, PCA maps, `ssl-zoo viz` on a ViT and
on a CNN checkpoint, the training callback's pictures, and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from ssl_zoo import cli
from ssl_zoo.eval.visualize import (
    VizError,
    cls_attention_maps,
    last_block_attention,
    patch_feature_maps,
    pca_maps,
    pictures,
)
from ssl_zoo.models.backbones import Backbone
from tests.tiny_run import tiny_vit_run


def _tiny_vit(**kwargs) -> Backbone:
    torch.manual_seed(0)
    return Backbone("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, embed_dim=64, num_heads=2,
                    dynamic_img_size=True, **kwargs).eval()  # fmt: skip


@pytest.mark.parametrize("extra", [{}, {"reg_tokens": 2, "qk_norm": True}], ids=["plain", "registers+qk_norm"])
def test_attention_equals_timms_unfused_attention(extra):
    backbone = _tiny_vit(**extra)
    images = torch.randn(3, 3, 32, 32)
    weights, _ = last_block_attention(backbone, images)

    # Reference: timm's own attention with the fused kernel off, captured after its softmax.
    attn = backbone.model.blocks[-1].attn
    attn.fused_attn = False
    captured = {}
    handle = attn.attn_drop.register_forward_hook(lambda module, inputs, output: captured.setdefault("a", output))
    with torch.no_grad():
        backbone(images)
    handle.remove()
    prefix = backbone.num_prefix_tokens
    assert prefix == 1 + extra.get("reg_tokens", 0)
    assert weights.shape == (3, 2, prefix + 64, prefix + 64)
    torch.testing.assert_close(weights, captured["a"], atol=1e-5, rtol=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, prefix + 64), atol=1e-5, rtol=0)

    maps = cls_attention_maps(backbone, images)
    assert maps.shape == (3, 2, 8, 8)
    # The CLS row without the prefix tokens (class, registers): the patches' share of it.
    torch.testing.assert_close(maps.flatten(2), captured["a"][:, :, 0, prefix:], atol=1e-5, rtol=0)
    assert (maps.flatten(2).sum(-1) <= 1 + 1e-6).all()


def test_pca_separates_a_distinct_foreground_and_maps_shapes():
    torch.manual_seed(0)
    features = torch.randn(2, 6, 6, 16) * 0.1
    features[:, 2:4, 2:4] += torch.randn(16) * 3  # a block of very different patches in the middle
    rgb, foreground = pca_maps(features)
    assert rgb.shape == (2, 6, 6, 3) and foreground.shape == (2, 6, 6)
    expected = torch.zeros(2, 6, 6, dtype=torch.bool)
    expected[:, 2:4, 2:4] = True
    assert torch.equal(foreground, expected)  # the sign flip puts the borders in the background
    assert rgb.min() >= 0 and rgb.max() <= 1 and (rgb[~foreground] == 0).all()

    out = pictures(_tiny_vit(), torch.randn(2, 3, 32, 32))
    assert out["attention"].shape == (2, 2, 8, 8) and out["pca"].shape == (2, 8, 8, 3)


def test_cnn_gives_pca_maps_and_refuses_attention():
    cnn = Backbone("resnet10t").eval()
    images = torch.randn(2, 3, 64, 64)
    assert patch_feature_maps(cnn, images).shape == (2, 2, 2, 512)
    with pytest.raises(VizError, match="resnet10t has no attention \\(a CNN\\)"):
        cls_attention_maps(cnn, images)
    out = pictures(cnn, images, attention=False)
    assert out["attention"] is None and out["pca"].shape == (2, 2, 2, 3)


def _images(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (40, 30), color=(40 * i, 100, 200)).save(folder / f"img{i}.png")
    return folder


@pytest.mark.slow
def test_viz_cli_on_a_vit_run_and_the_training_callback(tmp_path_factory, tmp_path, capsys):
    run_dir = tiny_vit_run(tmp_path_factory)
    # The callback (default config: at the end only) drew the first kNN query images.
    assert (run_dir / "viz" / "step_000002.png").is_file()

    images, out = _images(tmp_path / "images"), tmp_path / "pictures"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert cli.main(["viz", f"ckpt={ckpt}", f"images={images}", f"out={out}", "size=32"]) == 0
    assert "wrote 3 picture(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.png")) == ["img0.png", "img1.png", "img2.png"]

    assert cli.main(["viz", f"ckpt={ckpt}", f"images={images}", f"out={out}", "size=30"]) == 1
    assert "size=30 is not a multiple of the patch size 4" in capsys.readouterr().err


def test_viz_cli_on_a_cnn_checkpoint_skips_attention_with_a_note(tmp_path, capsys):
    # A checkpoint as `ssl-zoo train` writes it for a resnet10t run (fresh weights).
    cnn = Backbone("resnet10t")
    state = {f"teacher.backbone.{k}": v for k, v in cnn.state_dict().items()}
    config = {"backbone": {"_target_": "ssl_zoo.models.backbones.Backbone", "model_name": "resnet10t"},
              "data": {"image_size": 64, "mean": [0.5] * 3, "std": [0.25] * 3}}
    ckpt = tmp_path / "cnn.ckpt"
    torch.save({"state_dict": state, "ssl_zoo_config": config}, ckpt)
    images, out = _images(tmp_path / "images", 2), tmp_path / "pictures"

    assert cli.main(["viz", f"ckpt={ckpt}", f"images={images}", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "attention maps skipped: backbone resnet10t has no attention (a CNN)" in printed
    assert len(list(out.glob("*.png"))) == 2

    assert cli.main(["viz", f"ckpt={ckpt}", f"images={images}", f"out={out}", "attention=true"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssl-zoo viz: error: attention=true, but backbone resnet10t has no attention") and "\n" not in err


def test_viz_cli_bad_input(tmp_path, capsys):
    def error(args: list[str]) -> str:
        assert cli.main(["viz", *args]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("ssl-zoo viz: error:") and "\n" not in err, err
        return err

    assert "images is not set" in error([f"ckpt={tmp_path / 'x.ckpt'}", f"out={tmp_path}"])
    assert "x.ckpt: no such file" in error([f"ckpt={tmp_path / 'x.ckpt'}", f"images={tmp_path}", f"out={tmp_path}"])
    assert cli.main(["viz", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(key in out for key in ("ckpt:", "images:", "out:", "which:", "size:", "attention:", "pca_threshold:"))
