"""method=supervised: the labels through the SSL pipeline (the ceiling of a study)."""

import math

import pytest
import torch

from ssl_zoo.optim.run_plan import RunPlan
from ssl_zoo.train import build_all
from tests.conftest import TINY_DATA

QUIET = ["callbacks.knn=null", "callbacks.progress=null", "callbacks.checkpoint=null", "~logger"]


def _method_and_batch(compose_cfg):
    parts = build_all(compose_cfg([*TINY_DATA, *QUIET, "method=supervised"]))
    parts["datamodule"].setup("fit")
    method = parts["method"]
    method.plan_run(RunPlan(total_steps=10, steps_per_data_epoch=5, global_batch_size=32))
    return method, next(iter(parts["datamodule"].train_dataloader()))


def test_cross_entropy_on_both_views_reaches_the_backbone(compose_cfg):
    method, batch = _method_and_batch(compose_cfg)
    loss, logs = method.compute_loss(batch, step=0)
    assert abs(loss.item() - math.log(10)) < 1.0  # about chance at init
    loss.backward()
    assert method.student["backbone"].model.conv1[0].weight.grad.abs().sum() > 0
    # the labels matter: permuting them changes the loss
    shuffled = {**batch, "labels": batch["labels"].roll(1)}
    assert not torch.isclose(method.compute_loss(shuffled, step=0)[0], loss)
    assert 0.0 <= logs["top1"] <= 1.0


def test_unlabeled_data_is_refused_with_the_reason(compose_cfg):
    method, batch = _method_and_batch(compose_cfg)
    with pytest.raises(ValueError, match="method=supervised needs labeled training data"):
        method.compute_loss({**batch, "labels": torch.full_like(batch["labels"], -1)}, step=0)
