"""Experiment presets: overrides only, every paper value cites its source, all compose."""

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from ssl_zoo.config import CONFIG_DIR
from ssl_zoo.data.sampling import batches_per_epoch
from ssl_zoo.optim.run_plan import plan_run_length
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


# The papers' runs: (processes, images per process, images, optimizer steps of the run).
# DINO README ViT-S/16: 8 x 64, 100 epochs of 2502 steps; DINOv2 vitl16_short: 32 x 64,
# 100 "epochs" of 1250 iterations; BYOL: 4096 images per step, 300 epochs.
PAPER_RUNS = {
    "dino_vits16_in1k": (8, 64, 1281167, 100 * 2502),
    "dinov2_vitl16_in1k": (32, 64, 1281167, 100 * 1250),
    "byol_r50_in1k": (32, 128, 1281167, 300 * (1281167 // 4096)),
}


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_preset_run_length_is_the_papers(tmp_path, name):
    world, batch, images, paper_steps = PAPER_RUNS[name]
    cfg = compose_config([f"experiment={name}"], tmp_path)
    max_epochs, max_steps = cfg.trainer.max_epochs, cfg.trainer.max_steps
    run = plan_run_length(batches_per_epoch(images, world, batch), 1, max_epochs, max_steps)
    assert run.total_steps == paper_steps
    # Each limit that is set is the paper's run (Lightning stops at the first one reached,
    # and treats an unset max_epochs as unbounded once max_steps is set).
    assert max_steps == -1 or max_steps == paper_steps
    assert max_epochs is None or max_epochs * run.steps_per_data_epoch == paper_steps
    assert max_steps > 0 or max_epochs is not None


DEVIATION = re.compile(r"^\s*(\w+):[^#]*#\s*(?:paper|reference) (?:[\d.e-]+|true|false)\b")
DOC_SECTIONS = {  # config file -> (its section of docs/methods.md, key prefix)
    "method/dino.yaml": ("### DINO (", "method."),
    "method/dinov2.yaml": ("### DINOv2 (", "method."),
    "method/byol.yaml": ("### BYOL (", "method."),
    "augmentation/dino.yaml": ("### DINO (", "augmentation.transform."),
}


@pytest.mark.parametrize("config", sorted(DOC_SECTIONS))
def test_every_default_that_leaves_the_paper_is_in_the_methods_table(config):
    heading, prefix = DOC_SECTIONS[config]
    doc = (Path(CONFIG_DIR).parents[2] / "docs" / "methods.md").read_text()
    section = doc[doc.index(heading):]
    section = section[: section.find("\n#", 1)]
    lines = (Path(CONFIG_DIR) / config).read_text().splitlines()
    deviating = [m.group(1) for m in map(DEVIATION.match, lines) if m]
    assert deviating or config == "method/byol.yaml"
    missing = [key for key in deviating if f"`{prefix}{key}`" not in section]
    assert not missing, f"{config}: defaults marked as leaving the paper but not in docs/methods.md {heading}...: {missing}"


# deepmind-research byol/configs/byol.py: the 300-epoch row of _LR_PRESETS, _WD_PRESETS and
# _EMA_PRESETS (the paper's sec. 3.3 values, 0.2 / 1.5e-6 / 0.996, are its 1000-epoch row).
BYOL_300_EPOCHS = {"base_lr": 0.3, "weight_decay": 1e-6, "momentum_teacher": 0.99}


def test_byol_preset_uses_the_reference_300_epoch_hyper_parameters(tmp_path):
    cfg = compose_config(["experiment=byol_r50_in1k"], tmp_path)
    assert cfg.trainer.max_epochs == 300
    schedule = cfg.optim.schedule
    assert schedule.base_lr == pytest.approx(BYOL_300_EPOCHS["base_lr"])
    assert schedule.lr_scaling == "linear_256"
    assert schedule.weight_decay == schedule.weight_decay_end == pytest.approx(BYOL_300_EPOCHS["weight_decay"])
    assert cfg.method.momentum_teacher == pytest.approx(BYOL_300_EPOCHS["momentum_teacher"])
    assert cfg.optim.optimizer._target_ == "ssl_zoo.optim.lars.LARS"
    assert cfg.optim.optimizer.trust_ratio == "byol"  # byol/utils/optimizers.py: eta |w| / |g + wd w|
    assert (cfg.optim.optimizer.eta, cfg.optim.optimizer.momentum) == (1e-3, 0.9)


@pytest.mark.parametrize(
    ("name", "reference_batch", "scaled"),
    [("byol_r50_in1k", 4096, "x 64/256"), ("dinov2_vitl16_in1k", 2048, "x sqrt(64/1024)"),
     ("dino_vits16_in1k", 512, "x 64/256")],
)
def test_a_preset_states_its_effective_batch_and_lr_when_it_differs(tmp_path, name, reference_batch, scaled):
    from ssl_zoo.train import build_backbone, build_method, reference_notices

    cfg = compose_config([f"experiment={name}", "data.batch_size=64"], tmp_path)
    with torch.device("meta"):
        method = build_method(cfg, build_backbone(cfg))
    notices = reference_notices(cfg, method, 64, devices=1, nodes=1)
    batch_notice = next(n for n in notices if "global batch" in n)
    assert "global batch 64 " in batch_notice and f"the reference's is {reference_batch}" in batch_notice
    peak = method.schedule.base_lr * (64 / 256 if "256" in scaled else (64 / 1024) ** 0.5)
    reference_peak = method.schedule.base_lr * (
        reference_batch / 256 if "256" in scaled else (reference_batch / 1024) ** 0.5)
    assert f"{scaled} (lr_scaling=" in batch_notice and f"= {peak:.3g};" in batch_notice
    assert f"would be {reference_peak:.3g}" in batch_notice
    at_reference = reference_notices(cfg, method, reference_batch, devices=8, nodes=1)
    assert not any("global batch" in n for n in at_reference)
    assert all(cfg.reference.precision in n for n in at_reference)  # only a precision notice, if any
