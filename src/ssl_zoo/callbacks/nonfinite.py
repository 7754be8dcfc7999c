"""Skip optimizer steps whose loss or gradients are not finite; stop past a limit.

A single NaN step (one bad batch, a transient overflow) should not end a week-long run,
and must not reach the weights either: a skipped step leaves the student, its optimizer
state and the EMA teacher exactly as they were. Many skipped steps mean the run has
diverged, and it stops with the likely causes named.

Contract with the method (``SSLMethod``): ``last_loss`` holds the detached loss of the
current step; ``skip_teacher_update`` set True makes the next EMA update a no-op.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from ssl_zoo import distributed
from ssl_zoo.distributed import full_norms
from ssl_zoo.errors import UserError

log = logging.getLogger("ssl_zoo")


class TrainingDivergedError(UserError):
    """Too many optimizer steps with a non-finite loss or gradient."""


class NonFiniteGuard(L.Callback):
    """Args:
        max_skipped_steps: stop once more than this many steps were skipped (0: stop at the
            first non-finite step, the strict mode for debugging).
    """

    def __init__(self, max_skipped_steps: int = 20) -> None:
        if not isinstance(max_skipped_steps, int) or max_skipped_steps < 0:
            raise ValueError(f"callbacks.nonfinite.max_skipped_steps must be an int >= 0, got {max_skipped_steps}")
        self.max_skipped_steps = max_skipped_steps
        self.skipped_steps = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        loss = getattr(pl_module, "last_loss", None)
        # One reduction and one host sync per step. The sum over processes makes the
        # decision global: every process skips, or none does (FSDP2 shards the gradients,
        # and each process has its own loss), so the replicas never drift apart.
        total = full_norms(grads).sum() if grads else torch.zeros(())
        if loss is not None:
            total = total + loss.float().abs()
        if bool(torch.isfinite(distributed.all_reduce_sum(total.reshape(1)))):
            return
        step = trainer.global_step
        for group in optimizer.param_groups:  # AdamW / SGD leave a parameter without grad untouched
            for param in group["params"]:
                param.grad = None
        pl_module.skip_teacher_update = True
        self.skipped_steps += 1
        pl_module.log("health/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        loss_text = "n/a" if loss is None else f"{loss.item():.4g}"
        log.warning(
            "step %d: non-finite loss or gradient (loss %s): optimizer step and teacher update skipped (%d so far)",
            step, loss_text, self.skipped_steps,
        )
        if self.skipped_steps > self.max_skipped_steps:
            raise TrainingDivergedError(
                f"training diverged: {self.skipped_steps} optimizer steps had a non-finite loss or gradient "
                f"(the last at step {step}; callbacks.nonfinite.max_skipped_steps={self.max_skipped_steps}). "
                "Likely causes: method.base_lr too high (or method.warmup_epochs too short), "
                "trainer.precision (try 32-true), a teacher or student temperature too low. The newest "
                "checkpoint holds the last finite weights"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
