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
    with pytest.raises(TrainingDivergedError, match=r"2 optimizer steps .*nonfinite.max_skipped_steps=1.*base_lr.*precision"):
        _fit(compose_cfg, ["callbacks.nonfinite.max_skipped_steps=1"], bad_steps=[1, 3], max_steps=5)


def test_bad_limit_names_the_key():
    with pytest.raises(ValueError, match="callbacks.nonfinite.max_skipped_steps"):
        NonFiniteGuard(max_skipped_steps=-1)
