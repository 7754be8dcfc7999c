"""DINO invariants through the real config composition and a real Lightning loop."""

import pytest
import torch

from ssl_zoo.optim.run_plan import RunPlan
from ssl_zoo.train import ConfigError, build_all
from tests.conftest import TINY_DATA, TINY_HEAD, TINY_VIT
from tests.parity import load_fixture

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
    method.plan_run(RunPlan(total_steps=10, steps_per_data_epoch=5, global_batch_size=32))
    loss, logs = method.compute_loss(batch, step=0)
    assert [s[-1] for s in calls["backbone"]] == [32, 16]
    assert calls["backbone"][0][0] == 2 * 32 and calls["backbone"][1][0] == 2 * 32
    assert len(calls["head"]) == 1 and calls["head"][0][0] == 4 * 32
    assert torch.isfinite(loss) and {"teacher_temp", "teacher_momentum", "dino_loss"} <= logs.keys()


def test_teacher_gets_no_gradient_and_center_moves(compose_cfg):
    parts = _parts(compose_cfg)
    method = parts["method"]
    batch = _one_batch(parts)
    method.plan_run(RunPlan(total_steps=10, steps_per_data_epoch=5, global_batch_size=32))
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
                                  "method.warmup_teacher_temp_epochs=3", "optim.schedule.warmup_epochs=1",
                                  "method.momentum_teacher=0.996", "optim.schedule.freeze_last_layer_epochs=1"])["method"]
    method.plan_run(RunPlan(total_steps=100, steps_per_data_epoch=10, global_batch_size=256))
    # One temperature per epoch, as main_dino.py: np.linspace(0.02, 0.06, 3)[epoch].
    assert [method.teacher_temp_at(s) for s in (0, 9, 10, 19, 20, 29, 30, 99)] == pytest.approx(
        [0.02, 0.02, 0.04, 0.04, 0.06, 0.06, 0.06, 0.06]
    )
    assert method.momentum_at(0) == pytest.approx(0.996)
    assert method.momentum_at(100) == pytest.approx(1.0)
    assert method.schedule.lr_at(method.schedule.warmup_steps) == pytest.approx(method.schedule.peak_lr)
    assert method.schedule.freeze_last_layer_steps == 10  # one epoch


def test_method_teacher_temperature_matches_the_dino_reference(compose_cfg):
    fx = load_fixture("dino_v1_loss")
    hp = fx["hparams"]
    method = _parts(compose_cfg, [f"method.warmup_teacher_temp={hp['warmup_teacher_temp']}",
                                  f"method.teacher_temp={hp['teacher_temp']}",
                                  f"method.warmup_teacher_temp_epochs={hp['warmup_teacher_temp_epochs']}"])["method"]
    steps_per_epoch = 7
    method.plan_run(RunPlan(total_steps=hp["nepochs"] * steps_per_epoch, steps_per_data_epoch=steps_per_epoch,
                            global_batch_size=64))
    for ref in fx["steps"]:
        for offset in (0, steps_per_epoch - 1):  # first and last step of the epoch
            step = ref["epoch"] * steps_per_epoch + offset
            assert method.teacher_temp_at(step) == pytest.approx(ref["teacher_temp"], rel=1e-6), step


def test_fractional_teacher_temperature_warmup_is_refused_for_dino(compose_cfg):
    with pytest.raises(ConfigError, match="warmup_teacher_temp_epochs must be a whole number"):
        _parts(compose_cfg, ["method.warmup_teacher_temp_epochs=1.5"])


def test_frozen_last_layer_gets_no_update_and_no_optimizer_state(compose_cfg):
    parts = _parts(compose_cfg, ["trainer.max_steps=2", "optim.schedule.freeze_last_layer_epochs=1"])
    method = parts["method"]
    seen = []
    original = method.apply_schedules

    def record(optimizer, step):
        out = original(optimizer, step)
        seen.append([g["lr"] for g in optimizer.param_groups if g["is_last_layer"]])
        return out

    method.apply_schedules = record
    last_layer = method.student["head"].last_layer.parametrizations.weight.original1
    before = last_layer.detach().clone()
    parts["trainer"].fit(method, datamodule=parts["datamodule"])
    assert seen and all(lr == [0.0] for lr in seen)  # 8 steps per epoch > 2 steps run
    # main_dino.py cancels the last layer's gradients in the first epoch: AdamW keeps no
    # moments for it (an lr of 0 alone would let them accumulate).
    optimizer = parts["trainer"].optimizers[0]
    assert last_layer not in optimizer.state
    assert torch.equal(last_layer.detach(), before)


def _fill_grads(params, scale):
    generator = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * scale


def test_gradients_are_clipped_per_parameter_as_in_main_dino(compose_cfg):
    method = _parts(compose_cfg)["method"]
    assert method.optim.grad_clip_mode == "per_parameter" and method.optim.grad_clip == 3.0
    params = [p for p in method.parameters() if p.requires_grad]
    _fill_grads(params, 1.0)
    params[0].grad.mul_(1e-4)  # one small gradient: untouched
    before = [p.grad.clone() for p in params]
    method.configure_gradient_clipping(None)
    for p, g in zip(params, before, strict=True):
        norm = g.norm()
        coef = 3.0 / (norm + 1e-6)  # utils.clip_gradients
        expected = g * coef if coef < 1 else g
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-8)
    assert torch.equal(params[0].grad, before[0])
    assert max(p.grad.norm() for p in params) <= 3.0 + 1e-4


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
