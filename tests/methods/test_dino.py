"""DINO invariants through the real config composition and a real Lightning loop."""

import pytest
import torch

from ssl_zoo.train import ConfigError, build_all
from tests.conftest import TINY_DATA, TINY_HEAD, TINY_VIT

VIT_DINO = [*TINY_DATA, *TINY_VIT, *TINY_HEAD, "augmentation.transform.n_local=2", "callbacks.knn=null",
            "callbacks.progress=null", "callbacks.checkpoint=null", "~logger"]


def _parts(compose_cfg, extra=()):
    return build_all(compose_cfg([*VIT_DINO, *extra]))


def _one_batch(parts):
    datamodule = parts["datamodule"]
    datamodule.setup("fit")
    return next(iter(datamodule.train_dataloader()))


def test_backbone_runs_once_per_resolution_and_head_once(compose_cfg):
    parts = _parts(compose_cfg)
    method = parts["method"]
    batch = _one_batch(parts)
    assert batch["global_crops"].shape[-1] == 32 and batch["local_crops"].shape[-1] == 16
    calls = {"backbone": [], "head": []}
    method.student["backbone"].register_forward_hook(lambda m, i, o: calls["backbone"].append(i[0].shape))
    method.student["head"].register_forward_hook(lambda m, i, o: calls["head"].append(i[0].shape))
    method.setup_schedules(total_steps=10, steps_per_epoch=5, global_batch_size=32)
    loss, logs = method.compute_loss(batch, step=0)
    assert [s[-1] for s in calls["backbone"]] == [32, 16]
    assert calls["backbone"][0][0] == 2 * 32 and calls["backbone"][1][0] == 2 * 32
    assert len(calls["head"]) == 1 and calls["head"][0][0] == 4 * 32
    assert torch.isfinite(loss) and {"teacher_temp", "teacher_momentum", "dino_loss"} <= logs.keys()


def test_teacher_gets_no_gradient_and_center_moves(compose_cfg):
    parts = _parts(compose_cfg)
    method = parts["method"]
    batch = _one_batch(parts)
    method.setup_schedules(total_steps=10, steps_per_epoch=5, global_batch_size=32)
    center_before = method.targets.center.clone()
    loss, _ = method.compute_loss(batch, step=0)
    loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert all(not p.requires_grad for p in method.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.parameters())
    assert not torch.equal(method.targets.center, center_before)


def test_ema_follows_optimizer_steps_not_batches_under_accumulation(compose_cfg):
    parts = _parts(compose_cfg, ["trainer.max_steps=3", "trainer.accumulate_grad_batches=2"])
    method, trainer = parts["method"], parts["trainer"]
    updates = []
    original = method.update_teacher
    method.update_teacher = lambda step: (updates.append(step), original(step))
    batches = []
    method_step = method.training_step

    def counting_step(batch, batch_idx):
        batches.append(batch_idx)
        return method_step(batch, batch_idx)

    method.training_step = counting_step
    teacher_before = [p.clone() for p in method.teacher.parameters()]
    trainer.fit(method, datamodule=parts["datamodule"])
    assert len(batches) == 6  # 3 optimizer steps x 2 accumulated batches
    assert updates == [0, 1, 2]  # one EMA update per optimizer step, with its step index
    assert trainer.global_step == 3
    moved = [not torch.equal(a, b) for a, b in zip(teacher_before, method.teacher.parameters(), strict=True)]
    assert any(moved)
    assert not method.teacher["head"].training  # Lightning's .train() did not wake the teacher


def test_schedules_are_functions_of_the_optimizer_step(compose_cfg):
    method = _parts(compose_cfg, ["method.warmup_teacher_temp=0.02", "method.teacher_temp=0.06",
                                  "method.warmup_teacher_temp_epochs=2", "method.warmup_epochs=1",
                                  "method.momentum_teacher=0.996", "method.freeze_last_layer_epochs=1"])["method"]
    method.setup_schedules(total_steps=100, steps_per_epoch=10, global_batch_size=256)
    assert method.teacher_temp_at(0) == pytest.approx(0.02)
    assert method.teacher_temp_at(19) == pytest.approx(0.06)
    assert method.teacher_temp_at(50) == pytest.approx(0.06)
    assert method.momentum_at(0) == pytest.approx(0.996)
    assert method.momentum_at(100) == pytest.approx(1.0)
    assert method.lr_at(method.warmup_steps) == pytest.approx(method.peak_lr)
    assert method.freeze_last_layer_steps == 10  # one epoch


def test_last_layer_frozen_for_first_epoch_only(compose_cfg):
    parts = _parts(compose_cfg, ["trainer.max_steps=2"])
    method = parts["method"]
    seen = []
    original = method._apply_schedules

    def record(step):
        out = original(step)
        opt = method.trainer.optimizers[0]
        seen.append([g["lr"] for g in opt.param_groups if g["is_last_layer"]])
        return out

    method._apply_schedules = record
    method.freeze_last_layer_epochs = 1.0
    parts["trainer"].fit(method, datamodule=parts["datamodule"])
    assert seen and all(lr == [0.0] for lr in seen)  # 8 steps per epoch > 2 steps run


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("method.teacher_temp=0", "method.teacher_temp"),
        ("method.student_temp=-1", "method.student_temp"),
        ("method.momentum_teacher=1.5", "method.momentum_teacher"),
        ("method.center_momentum=-0.1", "method.center_momentum"),
        ("augmentation.transform.n_global=3", "augmentation.n_global"),
        ("augmentation.transform.local_size=18", "augmentation.transform.local_size"),
        ("method.teacher_targets=foo", "centering"),
    ],
)
def test_bad_values_fail_before_training_naming_the_key(compose_cfg, override, key):
    overrides = [*VIT_DINO, override]
    if "n_global" in override:
        overrides.append("augmentation.transform.global_blur_p=[1.0,0.1,0.1]")
        overrides.append("augmentation.transform.global_solarize_p=[0.0,0.2,0.0]")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_all(compose_cfg(overrides))
