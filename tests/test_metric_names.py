"""One metric namespace: every method, run for two tiny steps through the real config
and Lightning loop, logs the common metrics under the same names (docs/metrics.md), and
a healthy start does not trip the health monitor."""

import csv
import logging

import lightning as L
import pytest
from hydra.core.global_hydra import GlobalHydra

from ssl_zoo.config import compose_config
from ssl_zoo.train import build_all
from tests.conftest import TINY_DATA, TINY_HEAD, TINY_VIT

RUN = [*TINY_DATA, *TINY_VIT, "callbacks.knn=null", "callbacks.progress=null", "callbacks.checkpoint=null",
       "callbacks.curve=null", "+trainer.enable_progress_bar=false", "trainer.max_steps=2",
       "trainer.log_every_n_steps=1", "callbacks.health.every_n_steps=1"]
SMALL = {
    "dino": TINY_HEAD,
    "dinov2": TINY_HEAD,
    "byol": ["method.projector_hidden_dim=128", "method.projector_out_dim=64", "method.predictor_hidden_dim=128"],
    "supervised": [],
    "simclr": ["method.projector_hidden_dim=128", "method.projector_out_dim=64"],
}
EVERY_METHOD = {"train/loss", "train/lr", "train/wd", "health/embedding_std", "health/embedding_std_ratio",
                "health/rankme"}
WITH_TEACHER = {"train/teacher_momentum"}
DINO_FAMILY = {"train/dino_loss", "train/teacher_temp", "health/teacher_entropy", "health/kl_to_uniform",
               "health/prototype_usage", "health/center_norm"}
EXPECTED = {
    "dino": EVERY_METHOD | WITH_TEACHER | DINO_FAMILY,
    "dinov2": EVERY_METHOD | WITH_TEACHER | DINO_FAMILY
    | {"train/dino_local_loss", "train/dino_global_loss", "train/ibot_loss", "train/koleo_loss",
       "train/masked_patch_fraction"},
    "byol": EVERY_METHOD | WITH_TEACHER | {"train/byol_loss"},
    "supervised": EVERY_METHOD | {"train/ce_loss", "train/top1"},
    "simclr": EVERY_METHOD | {"train/simclr_loss"},
}


def _logged(method: str, run_dir) -> dict[str, list[float]]:
    cfg = compose_config([f"method={method}", *RUN, *SMALL[method]], run_dir)
    try:
        L.seed_everything(0)
        parts = build_all(cfg)
        parts["trainer"].fit(parts["method"], datamodule=parts["datamodule"])
    finally:
        GlobalHydra.instance().clear()
    rows = list(csv.DictReader(next(run_dir.glob("csv/**/metrics.csv")).open()))
    names = {name for row in rows for name, value in row.items() if value and name not in ("step", "epoch")}
    return {name: [float(row[name]) for row in rows if row.get(name)] for name in names}


@pytest.mark.slow
def test_every_method_logs_the_common_names_and_a_healthy_start_does_not_warn(tmp_path, caplog):
    logged = {}
    with caplog.at_level(logging.WARNING, logger="ssl_zoo.health"):
        for method in EXPECTED:
            logged[method] = _logged(method, tmp_path / method)
    for method, expected in EXPECTED.items():
        assert set(logged[method]) == expected, method  # nothing missing, nothing under another name
    assert [r.getMessage() for r in caplog.records if r.name == "ssl_zoo.health"] == []
    # DINOv2's train/dino_loss is DINO's definition: its two view-pair terms, before dino_weight (1 here)
    dinov2 = logged["dinov2"]
    for total, local, glob in zip(dinov2["train/dino_loss"], dinov2["train/dino_local_loss"],
                                  dinov2["train/dino_global_loss"], strict=True):
        assert total == pytest.approx(local + glob, rel=1e-5)
