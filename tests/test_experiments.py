"""Experiment presets: overrides only, every paper value cites its source, all compose."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from ssl_zoo.config import CONFIG_DIR
from ssl_zoo.train import build_all
from tests.conftest import SHARED, compose_config

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
PAPER_PRESETS = ["byol_r50_in1k", "dino_vits16_in1k", "dinov2_vitl16_in1k"]


def test_the_issue_presets_exist():
    expected = {*PAPER_PRESETS, "cifar10_byol", "cifar10_dino", "cifar10_dinov2"}
    assert expected <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_preset_composes_and_resolves(tmp_path, name):
    cfg = compose_config([f"experiment={name}"], tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]  # Hydra's own keys need a running job; ours must all resolve
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["method"]["_target_"].startswith("ssl_zoo.methods.")


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_every_paper_value_cites_its_source(name):
    text = (Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").read_text().splitlines()
    body = [line for line in text if line.strip() and not line.lstrip().startswith(("#", "-", "defaults"))]
    leaves = [line for line in body if not line.rstrip().endswith(":")]
    uncited = [line for line in leaves if "#" not in line]
    assert not uncited, f"values without a source comment in {name}: {uncited}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10_byol", "cifar10_dino", "cifar10_dinov2"])
def test_cifar10_preset_trains_on_the_shared_images(tmp_path, name):
    if not (SHARED / "datasets" / "cifar10" / "train").is_dir():
        pytest.fail(f"CIFAR-10 images expected under {SHARED}/datasets/cifar10 (set SSL_ZOO_SHARED_DIR)")
    cfg = compose_config([
        f"experiment={name}", f"data.root={SHARED}/datasets/cifar10/train",
        f"data.knn_val_root={SHARED}/datasets/cifar10/val", "trainer.max_steps=2", "data.batch_size=16",
        "data.num_workers=0", "callbacks.knn=null", "callbacks.progress=null", "logger=csv",
    ], tmp_path)
    parts = build_all(cfg)
    parts["trainer"].fit(parts["method"], datamodule=parts["datamodule"])
    assert parts["trainer"].global_step == 2
