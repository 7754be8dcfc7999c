"""`ssl-zoo export`: a run's backbone as safetensors that plain timm loads with the same
features, and back into ssl_zoo (backbone.init_from, method.head_init_from)."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import open_dict
from safetensors.torch import load_file

from ssl_zoo import cli
from ssl_zoo.models.backbones import Backbone
from ssl_zoo.train import build_backbone
from ssl_zoo.weights.export import ExportError, export_backbone
from ssl_zoo.weights.load import load_backbone, load_checkpoint, run_config
from tests.conftest import TINY_DATA, TINY_HEAD, TINY_VIT

TOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two 2-step runs, trained once in this process: DINO + resnet10t, DINOv2 + tiny ViT."""
    from ssl_zoo.config import compose_config
    from ssl_zoo.train import train

    checkpoints = {}
    for name, overrides in {"cnn": [], "vit": ["method=dinov2", *TINY_VIT]}.items():
        run_dir = tmp_path_factory.mktemp(name)
        cfg = compose_config([*TINY_DATA, *TINY_HEAD, "trainer.max_steps=2", "callbacks.knn=null", "callbacks.curve=null", "callbacks.progress=null", *overrides], run_dir)
        with open_dict(cfg):
            del cfg["hydra"]  # as the Hydra app sees it (the run dir stays in HydraConfig)
        checkpoints[name] = train(cfg, run_dir)["checkpoint"]
    GlobalHydra.instance().clear()
    return checkpoints


def plain_timm(info: dict) -> torch.nn.Module:
    """Run the printed call, as a user would paste it."""
    namespace: dict = {}
    exec(info["python"], namespace)  # noqa: S102 - our own generated snippet
    return namespace["model"]


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_exported_backbone_loads_in_plain_timm_with_equal_features(runs, kind, tmp_path):
    ckpt = runs[kind]
    info = export_backbone(ckpt, tmp_path / "backbone.safetensors", which="teacher", head=True)
    model = plain_timm(info)
    ours, _ = load_backbone(ckpt, which="teacher")
    size = 32
    images = torch.randn(4, 3, size, size)
    with torch.no_grad():
        diff = (model(images) - ours(images)["cls"]).abs().max().item()
    print(f"max abs difference plain timm vs ssl_zoo ({kind}): {diff:.2e}")
    assert diff <= TOL
    weights = load_file(tmp_path / "backbone.safetensors")
    assert set(weights) == set(model.state_dict())  # nothing ssl_zoo-only (no mask_token)
    sidecar = json.loads((tmp_path / "backbone.json").read_text())
    assert sidecar["python"] == info["python"] and "pretrained_cfg_overlay=dict(file=" in info["python"]
    heads = load_file(info["head_file"])
    if kind == "vit":
        assert "mask_token" in heads and "dino_head.last_layer.weight_g" in heads
        assert info["kwargs"]["patch_size"] == 4 and info["kwargs"]["depth"] == 2
    else:
        assert "head.mlp.1.running_mean" in heads  # the CNN preset's head has BatchNorm


@pytest.mark.parametrize("kind", ["cnn", "vit"])  # DINO head with BatchNorm; DINOv2 head + mask token
def test_export_round_trips_into_continued_pretraining(runs, kind, tmp_path):
    ckpt = runs[kind]
    info = export_backbone(ckpt, tmp_path / "vit.safetensors", head=True)
    teacher = {k[len("teacher."):]: v for k, v in load_checkpoint(ckpt)["state_dict"].items() if k.startswith("teacher.")}
    cfg = run_config(ckpt)
    cfg.backbone.init_from = info["file"]
    backbone = build_backbone(cfg)
    method = instantiate(cfg.method, backbone=backbone, optim=instantiate(cfg.optim), head_init_from=info["head_file"])
    for net in (method.student, method.teacher):
        state = net.state_dict()
        assert set(state) == set(teacher)
        for key, value in teacher.items():
            assert torch.equal(state[key], value), key
    # The training checkpoint itself is a valid init_from too (teacher backbone).
    cfg.backbone.init_from = str(ckpt)
    direct = build_backbone(cfg)
    assert all(torch.equal(v, teacher[f"backbone.{k}"]) for k, v in direct.state_dict().items())


def handmade_checkpoint(path, backbone: Backbone, backbone_cfg: dict, method: str = "dino.DINO"):
    """A checkpoint as `ssl-zoo train` writes it, for settings no tiny run here uses."""
    config = {"backbone": {"_target_": "ssl_zoo.models.backbones.Backbone", **backbone_cfg},
              "method": {"_target_": f"ssl_zoo.methods.{method}"}}
    torch.save({"state_dict": {f"teacher.backbone.{k}": v for k, v in backbone.state_dict().items()},
                "ssl_zoo_config": config}, path)
    return path


@pytest.mark.parametrize("setting, lines", [
    ({"small_image_stem": True}, ["model.conv1[0].stride = (1, 1)", "model.maxpool = torch.nn.Identity()"]),
    ({"stem_max_pool": False}, ["model.maxpool = torch.nn.Identity()"]),
])
def test_resnet_stem_settings_export_states_the_extra_lines(tmp_path, setting, lines):
    backbone = Backbone("resnet10t", **setting)
    # The run started from a file that is gone since: export and load_backbone don't need it.
    ckpt = handmade_checkpoint(tmp_path / "stem.ckpt", backbone, {
        "model_name": "resnet10t", **setting, "init_from": str(tmp_path / "gone.pth"), "init_from_key": "teacher"})
    info = export_backbone(ckpt, tmp_path / "stem.safetensors")
    code = [line for line in info["python"].splitlines() if line.startswith("model.") and line != "model.eval()"]
    assert code == lines and info["kwargs"] == {} and any("stem" in note for note in info["notes"])
    assert torch.equal(load_backbone(ckpt)[0].model.conv1[0].weight, backbone.model.conv1[0].weight)
    images = torch.randn(2, 3, 16, 16)  # small: the stride-1 stem keeps full-size maps
    with torch.no_grad():
        expected = backbone.eval()(images)["cls"]
        assert (plain_timm(info)(images) - expected).abs().max() <= TOL
        # Without the extra lines the features differ: that is why they are printed.
        bare = dict(info, python="\n".join(line for line in info["python"].splitlines() if line not in lines))
        assert (plain_timm(bare).eval()(images) - expected).abs().max() > 1e-3


def test_export_refuses_what_it_cannot_write_before_writing(tmp_path):
    backbone = Backbone("resnet10t")
    ckpt = handmade_checkpoint(tmp_path / "byol.ckpt", backbone, {"model_name": "resnet10t"}, method="byol.BYOL")
    with pytest.raises(ExportError, match="BYOL has no DINO-style head"):
        export_backbone(ckpt, tmp_path / "byol.safetensors", head=True)
    assert not (tmp_path / "byol.safetensors").exists()


def test_cli_export_prints_the_call_and_fails_in_one_line(runs, tmp_path, capsys):
    out = tmp_path / "student.safetensors"
    assert cli.main(["export", f"ckpt={runs['cnn']}", f"out={out}", "which=student"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "timm.create_model('resnet10t', pretrained=True" in printed
    assert json.loads(out.with_suffix(".json").read_text())["which"] == "student"

    for argv, message in [
        ([f"ckpt={tmp_path / 'missing.ckpt'}", f"out={out}"], "no such file"),
        ([f"ckpt={runs['cnn']}", "out=backbone.pt"], "must end in .safetensors"),
        ([f"ckpt={runs['cnn']}", f"out={out}", "which=ema"], "which='ema'"),
        ([f"ckpt={runs['cnn']}", "output=x"], "unknown argument 'output=x'"),
    ]:
        assert cli.main(["export", *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith("ssl-zoo export: error:") and message in err and len(err.strip().splitlines()) == 1, err
    assert cli.main(["export", "--help"]) == 0
    assert "which=teacher|student" in capsys.readouterr().out
