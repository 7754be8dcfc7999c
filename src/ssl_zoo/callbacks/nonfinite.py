"""Skip optimizer steps whose loss or gradients are not finite; stop past a limit.

A single NaN step (one bad batch, a transient overflow) should not end a week-long run,
and must not reach the weights either: a skipped step leaves the student, its optimizer
state and the EMA teacher exactly as they were. Many skipped steps mean the run has
diverged, and it stops with the likely causes named.

Each skipped step has a cause: the loss term that is not finite, or (finite loss) the
first parameters whose gradients are not. A cause is reported once, with its likely fix;
later steps with the same cause are counted (``health/skipped_steps``), not printed again.

Reduced precision:
- chosen automatically (``trainer.precision`` left to ssl_zoo, see :mod:`ssl_zoo.parallel.precision`)
  a non-finite step must not end the run: the guard switches the rest of the run to
  32-true, says so, and records the switch (checkpoints carry it, so a resume stays in
  fp32). ``allow_fp32_fallback`` is set for such runs by ``configure_run``;
- with a loss scaler (``16-mixed``), inf gradients at a finite loss are the scaler's
  overflow steps: it skips them and lowers its scale. They are counted as
  ``health/overflow_steps``, never as divergence; the EMA teacher skips them too.

Contract with the method (``SSLMethod``): ``last_loss`` holds the detached loss of the
current step and ``last_loss_terms`` its detached terms; ``skip_teacher_update`` set True
makes the next EMA update a no-op.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import Precision

from ssl_zoo.callbacks.checks import check_arg
from ssl_zoo.callbacks.protocol import RunContext
from ssl_zoo.errors import UserError
from ssl_zoo.methods.base import SSLMethod
from ssl_zoo.parallel import collectives
from ssl_zoo.parallel.collectives import full_norms

log = logging.getLogger("ssl_zoo")

FP32 = "32-true"


class TrainingDivergedError(UserError):
    """Too many optimizer steps with a non-finite loss or gradient."""


class NonFiniteGuard(L.Callback):
    """Args:
        max_skipped_steps: stop once more than this many steps were skipped (0: stop at the
            first non-finite step, the strict mode for debugging).
    """

    def __init__(self, max_skipped_steps: int = 20) -> None:
        check_arg("nonfinite", "max_skipped_steps", max_skipped_steps, lambda v: isinstance(v, int) and v >= 0,
                  "an int >= 0", hint="0: stop at the first non-finite step")
        self.max_skipped_steps = max_skipped_steps
        self.skipped_steps = 0
        self.overflow_steps = 0
        # True when trainer.precision was chosen automatically (configure_run).
        self.allow_fp32_fallback = False
        self.fp32_fallback_step: int | None = None
        self.causes: dict[str, int] = {}  # cause -> steps skipped for it

    def configure_run(self, context: RunContext) -> None:
        # An automatic choice must not end a run: fp32 takes over instead.
        self.allow_fp32_fallback = context.auto_precision

    # --- per step -----------------------------------------------------------------------

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        loss = pl_module.last_loss if isinstance(pl_module, SSLMethod) else None
        # One reduction and one host sync per step. The sum over processes makes the
        # decision global: every process skips, or none does (FSDP2 shards the gradients,
        # and each process has its own loss), so the replicas never drift apart.
        total = full_norms(grads).sum() if grads else torch.zeros(())
        if loss is not None:
            total = total + loss.float().abs()
        if bool(torch.isfinite(collectives.all_reduce_sum(total.reshape(1)))):
            return
        step = trainer.global_step
        loss_finite = loss is None or bool(torch.isfinite(collectives.all_reduce_sum(loss.float().reshape(1))))
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        overflow = loss_finite and scaler is not None
        cause = None if overflow else self._cause(pl_module, loss_finite)
        for group in optimizer.param_groups:  # AdamW / SGD leave a parameter without grad untouched
            for param in group["params"]:
                param.grad = None
        pl_module.skip_teacher_update = True
        precision = str(trainer.precision)
        if overflow:
            # fp16 with a loss scaler: an overflow the scaler handles (it skips this step too).
            self.overflow_steps += 1
            pl_module.log("health/overflow_steps", float(self.overflow_steps), on_step=True, on_epoch=False)
            return
        self.skipped_steps += 1
        pl_module.log("health/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        first = cause not in self.causes
        self.causes[cause] = self.causes.get(cause, 0) + 1
        reduced = precision != FP32 and not precision.startswith("64")
        if reduced and self.allow_fp32_fallback and self.fp32_fallback_step is None:
            self.fp32_fallback_step = step
            _use_fp32(trainer)
            _say(f"step {step}: {cause} under the automatically chosen trainer.precision={precision}: step skipped, "
                 f"and the rest of the run trains in {FP32} (set trainer.precision={precision} to keep it and "
                 "see such steps as warnings)")
            return  # the precision's fault, not the run's: it does not count towards divergence
        if first:
            _say(f"step {step}: {cause} (trainer.precision={precision}): optimizer step and teacher update "
                 f"skipped. {_fix(precision, loss_finite)}. Further steps with this cause are counted "
                 "(health/skipped_steps), not printed")
        if self.skipped_steps > self.max_skipped_steps:
            counts = "; ".join(f"{n} x {c}" for c, n in self.causes.items())
            raise TrainingDivergedError(
                f"training diverged: {self.skipped_steps} optimizer steps had a non-finite loss or gradient "
                f"(the last at step {step}; callbacks.nonfinite.max_skipped_steps={self.max_skipped_steps}): "
                f"{counts}. {_fix(precision, loss_finite)}. The newest checkpoint holds the last finite weights"
            )

    @staticmethod
    def _cause(pl_module: L.LightningModule, loss_finite: bool) -> str:
        if not loss_finite:
            terms = pl_module.last_loss_terms if isinstance(pl_module, SSLMethod) else {}
            bad = [name for name, value in terms.items() if not bool(torch.isfinite(value).all())]
            return f"non-finite loss ({', '.join(bad)})" if bad else "non-finite loss"
        bad = [name for name, p in pl_module.named_parameters()
               if p.grad is not None and not bool(torch.isfinite(collectives.local_tensor(p.grad)).all())]
        if not bad:  # another process's gradients (the decision is global)
            return "non-finite gradient on another process"
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        return f"non-finite gradient of {bad[0]}{more} (finite loss)"

    # --- resume -------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.fp32_fallback_step is not None and str(trainer.precision) != FP32 and self.allow_fp32_fallback:
            _use_fp32(trainer)
            _say(f"resumed run: trains in {FP32}, as it did since step {self.fp32_fallback_step} "
                 "(non-finite gradients under the automatically chosen reduced precision)")

    def summary(self) -> dict[str, Any]:
        return {"precision": {"fp32_fallback_step": self.fp32_fallback_step}, "skipped_steps": self.skipped_steps,
                "skipped_step_causes": dict(self.causes), "overflow_steps": self.overflow_steps}

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps, "overflow_steps": self.overflow_steps,
                "fp32_fallback_step": self.fp32_fallback_step, "causes": dict(self.causes)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.overflow_steps = int(state_dict.get("overflow_steps", 0))
        self.fp32_fallback_step = state_dict.get("fp32_fallback_step")
        self.causes = dict(state_dict.get("causes", {}))


def _fix(precision: str, loss_finite: bool) -> str:
    if precision != FP32:
        return (f"Likely cause: trainer.precision={precision} (a reduced-precision kernel or an overflow): "
                f"set trainer.precision={FP32}")
    if loss_finite:
        return ("Likely causes: optim.schedule.base_lr too high (or optim.schedule.warmup_epochs too short), or a gradient "
                "clip too loose (optim.grad_clip)")
    return ("Likely causes: optim.schedule.base_lr too high (or optim.schedule.warmup_epochs too short), a teacher or student "
            "temperature too low")


def _use_fp32(trainer: L.Trainer) -> None:
    """The rest of the run without autocast: Lightning enters the precision plugin's
    context at every step, so replacing the plugin takes effect at the next one."""
    trainer.strategy.precision_plugin = Precision()


def _say(message: str) -> None:
    log.warning(message)  # on the console too (train.yaml's ssl_zoo_warnings handler)
