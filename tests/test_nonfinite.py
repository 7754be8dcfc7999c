"""The non-finite guard: a NaN step leaves student, optimizer state and teacher untouched;
too many stop the run with the likely causes named."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from ssl_zoo.callbacks.nonfinite import NonFiniteGuard, TrainingDivergedError
from ssl_zoo.train import build_all
from tests.conftest import TINY_DATA, TINY_HEAD

QUIET = ["~logger", "callbacks.progress=null", "callbacks.checkpoint=null", "callbacks.knn=null",
         "callbacks.curve=null"]


class PoisonSteps(L.Callback):
    """Makes the loss NaN at the given steps and checks that those steps changed nothing."""

    def __init__(self, bad_steps):
        self.bad_steps = set(bad_steps)
        self.checked = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        self.before = {k: v.clone() for k, v in pl_module.state_dict().items()}
        optimizer = trainer.optimizers[0]
        self.moments = {id(p): s["exp_avg"].clone() for p, s in optimizer.state.items() if "exp_avg" in s}
        compute = type(pl_module).compute_loss
        poisoned = step in self.bad_steps

        def compute_loss(batch, step):
            loss, logs = compute(pl_module, batch, step)
            return (loss * float("nan") if poisoned else loss), logs

        pl_module.compute_loss = compute_loss

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step - 1
        if step not in self.bad_steps:
            return
        after = pl_module.state_dict()
        # BatchNorm statistics and DINO's center follow the (finite) forward pass, as in any
        # step; the weights, the optimizer moments and the EMA teacher must not move.
        forward_state = ("running_", "num_batches", "targets.center")
        changed = [k for k, v in self.before.items() if not any(s in k for s in forward_state)
                   and not torch.equal(v, after[k])]
        assert changed == [], f"step {step} was skipped but changed {changed[:3]}"
        for p, s in trainer.optimizers[0].state.items():
            if "exp_avg" in s and id(p) in self.moments:
                assert torch.equal(s["exp_avg"], self.moments[id(p)])
        self.checked.append(step)


def _fit(compose_cfg, extra, bad_steps, max_steps=6):
    head = [] if "method=byol" in extra else TINY_HEAD
    parts = build_all(compose_cfg([*TINY_DATA, *head, *QUIET, f"trainer.max_steps={max_steps}", *extra]))
    poison = PoisonSteps(bad_steps)
    parts["trainer"].callbacks.append(poison)
    guard = next(cb for cb in parts["callbacks"] if isinstance(cb, NonFiniteGuard))
    parts["trainer"].fit(parts["method"], datamodule=parts["datamodule"])
    return parts, guard, poison


@pytest.mark.parametrize("method", ["dino", "byol"])
def test_non_finite_steps_are_skipped_whole(compose_cfg, method):
    parts, guard, poison = _fit(compose_cfg, [f"method={method}"] if method != "dino" else [], bad_steps=[2, 4])
    assert guard.skipped_steps == 2 and poison.checked == [2, 4]
    assert parts["trainer"].global_step == 6
    assert all(torch.isfinite(v).all() for v in parts["method"].state_dict().values() if v.is_floating_point())


def test_too_many_non_finite_steps_stop_the_run_with_the_causes(compose_cfg):
    # Pinned 32-true (conftest): the causes are the loss's, not the precision's.
    with pytest.raises(TrainingDivergedError,
                       match=r"2 optimizer steps .*nonfinite.max_skipped_steps=1\): 2 x non-finite loss\. .*base_lr.*temperature"):
        _fit(compose_cfg, ["callbacks.nonfinite.max_skipped_steps=1"], bad_steps=[1, 3], max_steps=5)


def test_bad_limit_names_the_key():
    with pytest.raises(ValueError, match="callbacks.nonfinite.max_skipped_steps"):
        NonFiniteGuard(max_skipped_steps=-1)


class PoisonGradient(L.Callback):
    """Puts an inf into one parameter's gradient at the given steps (after backward)."""

    def __init__(self, parameter: str, bad_steps: list[int]) -> None:
        self.parameter = parameter
        self.bad_steps = set(bad_steps)

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step in self.bad_steps:
            dict(pl_module.named_parameters())[self.parameter].grad.view(-1)[0] = float("inf")


HEAD_WEIGHT = "student.head.mlp.0.weight"


def _fit_poisoned_gradient(compose_cfg, extra, bad_steps, max_steps=6, allow_fallback=False):
    parts = build_all(compose_cfg([*TINY_DATA, *TINY_HEAD, *QUIET, f"trainer.max_steps={max_steps}", *extra]))
    parts["trainer"].callbacks.append(PoisonGradient(HEAD_WEIGHT, bad_steps))
    guard = next(cb for cb in parts["callbacks"] if isinstance(cb, NonFiniteGuard))
    guard.allow_fp32_fallback = allow_fallback
    parts["trainer"].fit(parts["method"], datamodule=parts["datamodule"])
    return parts, guard


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ssl_zoo" and r.levelname == "WARNING"]


def test_a_non_finite_gradient_names_its_parameter_once_with_the_fix(compose_cfg, caplog):
    parts, guard = _fit_poisoned_gradient(compose_cfg, ["trainer.precision=32-true"], bad_steps=[1, 3, 4])
    cause = f"non-finite gradient of {HEAD_WEIGHT} (finite loss)"
    assert guard.skipped_steps == 3 and guard.causes == {cause: 3}
    lines = [m for m in _warnings(caplog) if cause in m]
    assert len(lines) == 1, lines  # once per cause, not once per step
    assert lines[0].startswith("step 1: ") and "optim.schedule.base_lr" in lines[0] and "counted" in lines[0]
    assert parts["trainer"].global_step == 6


def test_explicit_bf16_is_kept_and_the_message_says_set_fp32(compose_cfg, caplog):
    parts, guard = _fit_poisoned_gradient(compose_cfg, ["trainer.precision=bf16-mixed"], bad_steps=[2])
    (line,) = [m for m in _warnings(caplog) if HEAD_WEIGHT in m]
    assert "trainer.precision=bf16-mixed" in line and "set trainer.precision=32-true" in line
    assert str(parts["trainer"].precision) == "bf16-mixed" and guard.fp32_fallback_step is None


def test_an_automatic_reduced_precision_falls_back_to_fp32_instead_of_diverging(compose_cfg, caplog):
    # max_skipped_steps=1 with 2 poisoned steps: an explicit precision would stop the run.
    parts, guard = _fit_poisoned_gradient(
        compose_cfg, ["trainer.precision=bf16-mixed"], bad_steps=[2], allow_fallback=True
    )
    assert guard.fp32_fallback_step == 2 and str(parts["trainer"].precision) == "32-true"
    assert parts["trainer"].global_step == 6 and guard.skipped_steps == 1
    (line,) = [m for m in _warnings(caplog) if "rest of the run trains in 32-true" in m]
    assert line.startswith("step 2: ") and HEAD_WEIGHT in line
    # A resume of that run (its guard state restored) trains in fp32 from the start.
    resumed = build_all(compose_cfg([*TINY_DATA, *TINY_HEAD, *QUIET, "trainer.max_steps=2",
                                     "trainer.precision=bf16-mixed"]))
    resumed_guard = next(cb for cb in resumed["callbacks"] if isinstance(cb, NonFiniteGuard))
    resumed_guard.allow_fp32_fallback = True
    resumed_guard.load_state_dict(guard.state_dict())
    resumed["trainer"].fit(resumed["method"], datamodule=resumed["datamodule"])
    assert str(resumed["trainer"].precision) == "32-true" and resumed_guard.causes == guard.causes


def test_the_summary_records_the_fallback_through_train(tmp_path, monkeypatch):
    """End to end through train(): an automatic bf16 choice (pinned to bf16 here) that meets
    a non-finite gradient ends the run in fp32, with the step in summary.json."""
    from ssl_zoo.config import compose_config
    from ssl_zoo.parallel import precision
    from ssl_zoo.train import train

    monkeypatch.setenv(precision.PIN_ENV, "bf16-mixed")
    monkeypatch.setattr(precision, "_CHOICES", {})
    run_dir = tmp_path / "run"
    cfg = compose_config([
        *TINY_DATA, *TINY_HEAD, *QUIET, "trainer.max_steps=5", "callbacks.nonfinite.max_skipped_steps=0",
        "+callbacks.poison._target_=tests.test_nonfinite.PoisonGradient",
        f"+callbacks.poison.parameter={HEAD_WEIGHT}", "+callbacks.poison.bad_steps=[3]",
    ], run_dir)
    summary = train(cfg, run_dir)
    assert summary["steps"] == 5 and summary["skipped_steps"] == 1
    assert summary["precision"]["source"] == "auto" and summary["precision"]["fp32_fallback_step"] == 3
    assert summary["skipped_step_causes"] == {f"non-finite gradient of {HEAD_WEIGHT} (finite loss)": 1}


def test_a_non_finite_loss_term_is_named(compose_cfg, caplog):
    parts = build_all(compose_cfg([*TINY_DATA, *TINY_HEAD, *QUIET, "trainer.max_steps=3", "method=dinov2",
                                   "trainer.precision=32-true"]))
    method = parts["method"]
    compute = type(method).compute_loss

    def compute_loss(batch, step):
        loss, logs = compute(method, batch, step)
        if step == 1:
            logs["koleo_loss"] = logs["koleo_loss"] * float("nan")
            loss = loss * float("nan")
        return loss, logs

    method.compute_loss = compute_loss
    parts["trainer"].fit(method, datamodule=parts["datamodule"])
    guard = next(cb for cb in parts["callbacks"] if isinstance(cb, NonFiniteGuard))
    assert guard.causes == {"non-finite loss (koleo_loss)": 1}
    assert any(m.startswith("step 1: non-finite loss (koleo_loss)") and "temperature" in m for m in _warnings(caplog))
