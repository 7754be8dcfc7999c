"""Schedules: parity with both reference conventions, DINO teacher temperature, validation."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from ssl_zoo.optim.schedules import cosine_schedule, linear_warmup
from tests.parity import load_fixture


def _schedule_args(case: dict) -> dict:
    if "niter_per_ep" in case:  # DINO utils.cosine_scheduler: per-epoch arguments
        niter = case["niter_per_ep"]
        return dict(
            total_steps=case["epochs"] * niter,
            warmup_steps=case["warmup_epochs"] * niter,
            freeze_steps=0,
        )
    return dict(  # DINOv2 CosineScheduler: per-iteration arguments
        total_steps=case["total_iters"],
        warmup_steps=case["warmup_iters"],
        freeze_steps=case.get("freeze_iters", 0),
    )


def test_cosine_schedule_parity():
    cases = load_fixture("schedules")["cases"]
    assert {"niter_per_ep" in c for c in cases} == {True, False}  # both conventions present
    for i, case in enumerate(cases):
        args = _schedule_args(case)
        expected = case["values"]
        assert expected.numel() == args["total_steps"]
        values = [
            cosine_schedule(
                step,
                base=case["base_value"],
                final=case["final_value"],
                warmup_start=case["start_warmup_value"],
                **args,
            )
            for step in range(args["total_steps"])
        ]
        assert_close(
            torch.tensor(values, dtype=torch.float64),
            expected,
            rtol=1e-5,
            atol=1e-12,
            msg=lambda m, i=i, k=case["kind"]: f"case {i} ({k}): {m}",
        )
        # Past the end, the final value (DINOv2 CosineScheduler.__getitem__).
        end = cosine_schedule(
            args["total_steps"] + 3, base=case["base_value"], final=case["final_value"], **args
        )
        assert end == case["final_value"]


def test_dino_teacher_temperature_parity():
    fx = load_fixture("dino_v1_loss")
    hp = fx["hparams"]
    for step in fx["steps"]:
        temp = linear_warmup(
            step["epoch"],
            hp["warmup_teacher_temp_epochs"],
            hp["warmup_teacher_temp"],
            hp["teacher_temp"],
        )
        assert temp == pytest.approx(step["teacher_temp"], rel=1e-6), step["epoch"]


def test_linear_warmup_is_linspace_then_constant():
    values = [linear_warmup(s, 4, 0.04, 0.07) for s in range(7)]
    assert values == pytest.approx([0.04, 0.05, 0.06, 0.07, 0.07, 0.07, 0.07])
    assert linear_warmup(0, 0, 0.04, 0.07) == 0.07
    assert linear_warmup(0, 1, 0.04, 0.07) == 0.04  # np.linspace(a, b, 1) == [a]


def test_cosine_schedule_shape():
    values = [cosine_schedule(s, 20, 1.0, 0.0, warmup_steps=5, freeze_steps=3) for s in range(20)]
    assert values[:3] == [0.0, 0.0, 0.0]
    assert values[3:8] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert values[8] == 1.0  # warm-up ends at base (endpoint included), cosine starts at base
    assert all(values[i] >= values[i + 1] for i in range(8, 19))  # decreasing
    assert 0.0 < values[-1] < 0.05  # final is reached only after the last step
    assert cosine_schedule(20, 20, 1.0, 0.0) == 0.0


def test_schedule_validation():
    with pytest.raises(ValueError, match="total_steps"):
        cosine_schedule(0, 0, 1.0, 0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(0, 10, 1.0, 0.0, warmup_steps=-1)
    with pytest.raises(ValueError, match="freeze_steps"):
        cosine_schedule(0, 10, 1.0, 0.0, freeze_steps=-1)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_schedule(0, 10, 1.0, 0.0, warmup_steps=6, freeze_steps=5)
    with pytest.raises(ValueError, match="step"):
        cosine_schedule(-1, 10, 1.0, 0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        linear_warmup(0, -1, 0.04, 0.07)
    with pytest.raises(ValueError, match="step"):
        linear_warmup(-2, 3, 0.04, 0.07)


def test_byol_warmup_rule_and_epochs_of_images_follow_the_reference():
    from ssl_zoo.optim.schedules import Schedule
    from tests.reference_schedules import byol_learning_rate

    schedule = Schedule(base_lr=0.3, min_lr=0.0, warmup_epochs=10, weight_decay=1e-6, weight_decay_end=1e-6,
                        iterations_per_epoch="images", warmup_rule="fraction")
    schedule.plan(total_steps=93_835, steps_per_data_epoch=312, global_batch_size=4096, images_per_epoch=1_281_167)
    assert (schedule.warmup_steps, schedule.steps_per_epoch) == (3_127, 312)
    for step in (0, 1, 1000, 3_126, 3_127, 3_128, 50_000, 93_834):
        expected = byol_learning_rate(step, 4096, 0.3, 93_835, 3_127)
        assert schedule.lr_at(step) == pytest.approx(expected, rel=1e-12, abs=1e-15), step
    # The DINO rule reaches the peak one step earlier: the two differ during the warm-up.
    assert cosine_schedule(3_126, 93_835, 4.8, 0.0, warmup_steps=3_127) == 4.8
    assert schedule.lr_at(3_126) < 4.8
    with pytest.raises(ValueError, match="no known size"):
        schedule.plan(total_steps=10, steps_per_data_epoch=1, global_batch_size=32, images_per_epoch=None)
