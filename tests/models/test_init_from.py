"""backbone.init_from / method.head_init_from with files in the official layouts.

Nothing can be downloaded, so each test builds a state dict with the key names and shapes
of the published architectures (facebookresearch/dino vision_transformer.py and DINOHead,
facebookresearch/dinov2 DinoVisionTransformer and layers/dino_head.py; random values, 2
blocks, real widths / heads / patch sizes), loads it through our mapping, and compares
the features with a reference forward written here in plain torch from those tensors,
following the official block structure.
"""

from __future__ import annotations

import argparse
import pickle

import pytest
import torch
import torch.nn.functional as F

from ssl_zoo.methods.dino import DINO
from ssl_zoo.methods.dinov2 import DINOv2
from ssl_zoo.models.backbones import Backbone
from ssl_zoo.weights.initial import load_initial_weights
from ssl_zoo.weights.official import InitFromError
from tests.reference import official_vit_forward
from tests.reference import official_vit_state as official_vit

TOL = 1e-5


def pretrained(model_name: str, init_from: str, init_from_key: str = "teacher", **kwargs) -> Backbone:
    """The Backbone of ``backbone.init_from=... backbone.init_from_key=...``, as train builds it."""
    backbone = Backbone(model_name, **kwargs)
    load_initial_weights(backbone, {"init_from": init_from, "init_from_key": init_from_key})
    return backbone


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # the random input images: the printed differences are reproducible


# --- official-layout state dicts ---------------------------------------------------------


def official_head(in_dim, out_dim=128, hidden=256, bottleneck=64, seed=1) -> dict[str, torch.Tensor]:
    """DINOHead (3 layers, no BatchNorm): mlp.0/2/4 Linear, weight-normalised last_layer."""
    g = torch.Generator().manual_seed(seed)
    dims = [(hidden, in_dim), (hidden, hidden), (bottleneck, hidden)]
    sd = {}
    for index, (o, i) in zip((0, 2, 4), dims):
        sd[f"mlp.{index}.weight"] = torch.randn(o, i, generator=g) * 0.05
        sd[f"mlp.{index}.bias"] = torch.randn(o, generator=g) * 0.05
    sd["last_layer.weight_g"] = 1 + torch.rand(out_dim, 1, generator=g)
    sd["last_layer.weight_v"] = torch.randn(out_dim, bottleneck, generator=g)
    return sd


# --- reference forwards (plain torch, official block structure) --------------------------


def reference_vit(sd, images, patch, heads, offset=0.1, antialias=False) -> torch.Tensor:
    """The official CLS feature (tests/reference.py)."""
    return official_vit_forward(sd, images, patch, heads, offset, antialias)["cls"]


def reference_head(sd, x) -> torch.Tensor:
    for index in (0, 2, 4):
        x = F.linear(x, sd[f"mlp.{index}.weight"], sd[f"mlp.{index}.bias"])
        x = F.gelu(x) if index < 4 else x
    x = F.normalize(x, dim=-1)
    v = sd["last_layer.weight_v"]
    return F.linear(x, sd["last_layer.weight_g"] * v / v.norm(dim=1, keepdim=True))


def check_equal(name: str, ours: torch.Tensor, reference: torch.Tensor) -> None:
    diff = (ours - reference).abs().max().item()
    print(f"max abs difference {name}: {diff:.2e}")
    assert diff <= TOL, f"{name}: {diff}"


def features(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return backbone.eval()(images)["cls"]


# --- DINO ------------------------------------------------------------------------------------


def test_dino_vits16_release_file(tmp_path):
    sd = official_vit()  # ViT-S/16, 224 px: pos_embed (1, 197, 384), bare keys
    img_size = 112  # the 14x14 grid resampled to 7x7 (224 px: the training checkpoint test)
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(sd, path)
    backbone = pretrained("vit_small_patch16_224", img_size=img_size, depth=2, dynamic_img_size=True, init_from=str(path))
    images = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        check_equal(f"DINO ViT-S/16 release, {img_size} px", features(backbone, images), reference_vit(sd, images, 16, 6))


def test_dino_training_checkpoint_teacher_student_and_head(tmp_path):
    teacher, student = official_vit(seed=0), official_vit(seed=5)
    head = official_head(384, seed=2)
    checkpoint = {  # main_dino.py save_dict: DDP student ('module.'), MultiCropWrapper keys
        "student": {**{f"module.backbone.{k}": v for k, v in student.items()},
                    **{f"module.head.{k}": v for k, v in official_head(384, seed=3).items()}},
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **{f"head.{k}": v for k, v in head.items()}},
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=128),
        "dino_loss": {"center": torch.zeros(1, 128)},
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    images = torch.randn(2, 3, 224, 224)
    kwargs = dict(img_size=224, depth=2, dynamic_img_size=True, init_from=str(path))
    backbone = pretrained("vit_small_patch16_224", **kwargs)
    with torch.no_grad():
        check_equal("DINO training checkpoint, teacher", features(backbone, images), reference_vit(teacher, images, 16, 6))
        chosen = pretrained("vit_small_patch16_224", init_from_key="student", **kwargs)
        check_equal("DINO training checkpoint, student", features(chosen, images), reference_vit(student, images, 16, 6))

    method = DINO(backbone, out_dim=128, hidden_dim=256, bottleneck_dim=64, head_init_from=str(path))
    x = torch.randn(4, 384)
    with torch.no_grad():
        check_equal("DINO head", method.student["head"](x), reference_head(head, x))
        assert torch.equal(method.teacher["head"].mlp[0].weight, head["mlp.0.weight"])
    with pytest.raises(InitFromError, match=r"out_dim.*65536|65536.*out_dim|DINO head 384 -> 256 -> 256 -> 64 -> 128"):
        DINO(Backbone("vit_small_patch16_224", depth=2), out_dim=65536, hidden_dim=256, bottleneck_dim=64,
             head_init_from=str(path))


# --- DINOv2 ------------------------------------------------------------------------------


def test_dinov2_vits14_release_file_interpolates_37x37_positions(tmp_path):
    sd = official_vit(patch=14, grid=37, layer_scale=True, mask_token=True)  # pos_embed (1, 1370, 384)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    backbone = pretrained("vit_small_patch14_dinov2", img_size=224, depth=2, dynamic_img_size=True, init_from=str(path))
    images = torch.randn(2, 3, 224, 224)  # 16x16 patches: DINOv2 bicubic, scale (16 + 0.1) / 37
    with torch.no_grad():
        check_equal("DINOv2 ViT-S/14, 224 px", features(backbone, images), reference_vit(sd, images, 14, 6))
    backbone.enable_mask_token("dinov2")  # the file's mask token becomes ours
    assert torch.equal(backbone.mask_token.data, sd["mask_token"].reshape(1, 1, -1))


def test_dinov2_vits14_reg4_release_file(tmp_path):
    sd = official_vit(patch=14, grid=37, layer_scale=True, n_reg=4, mask_token=True)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(sd, path)
    backbone = pretrained("vit_small_patch14_reg4_dinov2", img_size=224, depth=2, dynamic_img_size=True, init_from=str(path))
    images = torch.randn(2, 3, 224, 224)  # _reg models: interpolate_offset 0, antialias
    with torch.no_grad():
        ours = features(backbone, images)
        check_equal("DINOv2 ViT-S/14 reg4, 224 px", ours, reference_vit(sd, images, 14, 6, offset=0.0, antialias=True))
        # Registers really enter: without them the reference differs.
        no_reg = {k: v for k, v in sd.items() if k != "register_tokens"}
        assert (ours - reference_vit(no_reg, images, 14, 6, offset=0.0, antialias=True)).abs().max() > 1e-3


def test_dinov2_training_checkpoint_chunked_blocks_and_heads(tmp_path):
    sd = official_vit(patch=14, grid=37, layer_scale=True, mask_token=True)
    chunked = {}  # block_chunks=2: chunk C holds block N (absolute index) -> blocks.C.N
    for key, value in sd.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            key = f"blocks.{index}.{index}.{rest}"
        chunked[key] = value
    assert "blocks.1.1.norm1.weight" in chunked
    dino_head, ibot_head = official_head(384, seed=3), official_head(384, seed=4)
    model = {**{f"teacher.backbone.{k}": v for k, v in chunked.items()},
             **{f"teacher.dino_head.{k}": v for k, v in dino_head.items()},
             **{f"teacher.ibot_head.{k}": v for k, v in ibot_head.items()},
             **{f"student.backbone.{k}": v + 1 for k, v in chunked.items()}}
    path = tmp_path / "model_0012499.pth"
    torch.save({"model": model, "iteration": 12499}, path)  # fvcore checkpointer
    backbone = pretrained("vit_small_patch14_dinov2", img_size=224, depth=2, dynamic_img_size=True, init_from=str(path))
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        check_equal("DINOv2 training checkpoint, chunked", features(backbone, images), reference_vit(sd, images, 14, 6))
    method = DINOv2(backbone, out_dim=128, ibot_out_dim=128, hidden_dim=256, bottleneck_dim=64,
                    separate_ibot_head=True, head_init_from=str(path))
    x = torch.randn(4, 384)
    with torch.no_grad():
        check_equal("DINOv2 dino_head", method.student["dino_head"](x), reference_head(dino_head, x))
        check_equal("DINOv2 ibot_head", method.teacher["ibot_head"](x), reference_head(ibot_head, x))
    assert torch.equal(method.student["backbone"].mask_token.data, sd["mask_token"].reshape(1, 1, -1))
    with pytest.raises(InitFromError, match="separate_ibot_head=true"):
        DINOv2(Backbone("vit_small_patch14_dinov2", img_size=224, depth=2), out_dim=128, ibot_out_dim=128,
               hidden_dim=256, bottleneck_dim=64, head_init_from=str(path))


def test_dinov2_vitg14_swiglu_mapping(tmp_path):
    # ViT-g/14 block: width 1536, 24 heads, SwiGLUFFNFused hidden 4096 (w12: 8192 x 1536).
    sd = official_vit(width=1536, depth=1, patch=14, grid=37, layer_scale=True, swiglu_hidden=4096)
    path = tmp_path / "dinov2_vitg14_pretrain.pth"
    torch.save(sd, path)
    backbone = pretrained("vit_giant_patch14_dinov2", img_size=28, depth=1, dynamic_img_size=True, init_from=str(path))
    images = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        check_equal("DINOv2 ViT-g/14 SwiGLU (1 block)", features(backbone, images), reference_vit(sd, images, 14, 24))


def test_timm_layout_safetensors_resamples_like_timm(tmp_path):
    # timm's own DINOv2 files (e.g. vit_small_patch14_reg4_dinov2.lvd142m) are timm layout at
    # 518 px; loading one at 224 px must equal timm's own pretrained loading.
    import timm
    from safetensors.torch import save_file

    name = "vit_small_patch14_reg4_dinov2"
    source = timm.create_model(name, num_classes=0, depth=2)
    with torch.no_grad():
        for param in source.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    ours = pretrained(name, img_size=224, depth=2, dynamic_img_size=True, init_from=str(path))
    reference = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), custom_load=False),
                                  num_classes=0, depth=2, img_size=224, dynamic_img_size=True)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        check_equal("timm-layout ViT-S/14 reg4 safetensors vs timm loading", features(ours, images), reference.eval()(images))


# --- ResNet-50 ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    """(torchvision ResNet-50 with random BatchNorm statistics, its state dict saved
    without fc as DINO released it)."""
    import torchvision

    reference = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("r50") / "dino_resnet50_pretrain.pth"
    torch.save({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}, path)
    reference.fc = torch.nn.Identity()
    return reference.eval(), path


def test_dino_resnet50_torchvision_layout(resnet50_file, tmp_path):
    reference, path = resnet50_file
    backbone = pretrained("resnet50", init_from=str(path))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        check_equal("DINO ResNet-50", features(backbone, images), reference(images))
    # A torchvision file with its classifier: fc is ignored, the rest loads.
    with_fc = tmp_path / "resnet50_with_fc.pth"
    torch.save({**torch.load(path, weights_only=True), "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}, with_fc)
    pretrained("resnet50", init_from=str(with_fc))


# --- errors ---------------------------------------------------------------------------------


def test_wrong_architecture_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "dinov2_vitb14_reg4_pretrain.pth"
    torch.save(official_vit(width=768, patch=14, grid=37, layer_scale=True, n_reg=4, mask_token=True), path)
    with pytest.raises(InitFromError) as err:
        pretrained("vit_small_patch16_224", img_size=224, depth=2, init_from=str(path))
    message = str(err.value)
    assert str(path) in message
    assert "looks like a ViT-B/14 with 4 registers, 2 blocks, layer scale" in message
    assert "is a ViT-S/16, 2 blocks" in message
    assert "backbone.model_name=vit_base_patch14_reg4_dinov2 +backbone.depth=2" in message

    # Layer scale in the file, none in the backbone: the unexpected gamma is named.
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(official_vit(patch=14, grid=37, layer_scale=True), path)
    with pytest.raises(InitFromError, match=r"unexpected blocks\.0\.ls1\.gamma.*vit_small_patch14_dinov2"):
        pretrained("vit_small_patch16_224", img_size=224, patch_size=14, depth=2, init_from=str(path))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_resnet_file_into_a_vit_and_bad_files(resnet50_file, tmp_path):
    path = resnet50_file[1]
    with pytest.raises(InitFromError, match=r"looks like a ResNet \(bottleneck blocks 3-4-6-3\).*choose backbone=resnet50"):
        pretrained("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, init_from=str(path))

    corrupt = tmp_path / "truncated.pth"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InitFromError, match="truncated.pth: cannot be read"):
        pretrained("resnet50", init_from=str(corrupt))
    bad_safetensors = tmp_path / "bad.safetensors"
    bad_safetensors.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(InitFromError, match="bad.safetensors: cannot be read as safetensors"):
        pretrained("resnet50", init_from=str(bad_safetensors))
    with pytest.raises(InitFromError, match="^backbone.init_from: .*missing.pth: no such file"):
        pretrained("resnet50", init_from=str(tmp_path / "missing.pth"))
    with pytest.raises(InitFromError, match="^backbone.init_from_key=ema: choose one of teacher, student"):
        pretrained("resnet50", init_from=str(path), init_from_key="ema")

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    crafted = tmp_path / "crafted.pth"
    with open(crafted, "wb") as f:
        pickle.dump({"conv1.weight": Exploit()}, f)
    with pytest.raises(InitFromError, match="pickled code, which is refused"):
        pretrained("resnet50", init_from=str(crafted))


def test_byol_refuses_head_init_from(tmp_path):
    from ssl_zoo.methods.byol import BYOL

    with pytest.raises(ValueError, match="BYOL has no official PyTorch head"):
        BYOL(Backbone("resnet10t"), projector_hidden_dim=32, projector_out_dim=16, predictor_hidden_dim=32,
             head_init_from=str(tmp_path / "x.pth"))
