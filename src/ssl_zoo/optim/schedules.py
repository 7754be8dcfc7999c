"""Schedules as pure functions of the optimizer step (no state, no epochs inside).

They reproduce the arrays of the reference implementations value for value:

- DINO ``utils.cosine_scheduler`` (per epoch): ``cosine_schedule(step, epochs * niter,
  base, final, warmup_steps=warmup_epochs * niter, warmup_start=start_warmup_value)``;
- DINOv2 ``CosineScheduler`` (per iteration): ``cosine_schedule(step, total_iters, base,
  final, warmup_iters, start_warmup_value, freeze_iters)``;
- DINO teacher temperature (per epoch): ``linear_warmup(epoch, warmup_teacher_temp_epochs,
  warmup_teacher_temp, teacher_temp)``.

Used for the learning rate, weight decay, teacher EMA momentum and teacher temperature
(Caron et al. 2021, Sec. 3.1 and App. B; Oquab et al. 2023, App. B.2).
"""

from __future__ import annotations

import math
from fractions import Fraction

#: How a linear warm-up reaches its peak: ``linspace`` (DINO ``cosine_scheduler``, DINOv2
#: ``CosineScheduler``: ``np.linspace`` with the endpoint) or ``fraction`` (BYOL,
#: deepmind-research byol/utils/schedules.py ``learning_schedule``: ``step / warmup``).
WARMUP_RULES = ("linspace", "fraction")

#: ``Schedule.iterations_per_epoch`` value for BYOL's epochs, counted in images seen.
EPOCHS_OF_IMAGES = "images"


def _linspace_at(i: int, n: int, start: float, end: float) -> float:
    """``np.linspace(start, end, n)[i]`` (endpoint included), computed as numpy does."""
    if n == 1:
        return start
    if i == n - 1:
        return end  # numpy sets the endpoint exactly
    return i * ((end - start) / (n - 1)) + start


def cosine_schedule(
    step: int,
    total_steps: int,
    base: float,
    final: float,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
    freeze_steps: int = 0,
    warmup_rule: str = "linspace",
) -> float:
    """Freeze, linear warm-up, then half-cosine from ``base`` to ``final``.

    Steps ``[0, freeze)`` give 0; steps ``[freeze, freeze + warmup)`` follow
    ``np.linspace(warmup_start, base, warmup_steps)`` (``warmup_rule="linspace"``, DINO and
    DINOv2: the last warm-up step is already ``base``) or ``warmup_start + (base -
    warmup_start) * i / warmup_steps`` (``"fraction"``, BYOL's ``learning_schedule``: ``base``
    is first reached by the cosine's first step); the ``n = total - freeze - warmup``
    remaining steps give
    ``final + 0.5 (base - final) (1 + cos(pi i / n))`` for ``i = 0 .. n-1`` (so ``final``
    itself is reached only at ``step >= total_steps``, which returns ``final``).

    Args:
        step: optimizer step, >= 0.
        total_steps: length of the schedule, > 0.
        base: value at the start of the cosine (peak value after warm-up).
        final: value at the end.
        warmup_steps: >= 0.
        warmup_start: first warm-up value.
        freeze_steps: >= 0 leading steps at 0 (DINOv2 freezes the last layer this way).

    Returns:
        The value at ``step``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if freeze_steps < 0:
        raise ValueError(f"freeze_steps must be >= 0, got {freeze_steps}")
    if warmup_steps + freeze_steps > total_steps:
        raise ValueError(
            f"warmup_steps + freeze_steps ({warmup_steps} + {freeze_steps}) must be <= "
            f"total_steps ({total_steps})"
        )
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_rule not in WARMUP_RULES:
        raise ValueError(f"warmup_rule must be one of {WARMUP_RULES}, got {warmup_rule!r}")
    if step >= total_steps:
        return final
    if step < freeze_steps:
        return 0.0
    step -= freeze_steps
    if step < warmup_steps:
        if warmup_rule == "fraction":
            return warmup_start + (base - warmup_start) * (step / warmup_steps)
        return _linspace_at(step, warmup_steps, warmup_start, base)
    step -= warmup_steps
    n_cosine = total_steps - freeze_steps - warmup_steps
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * step / n_cosine))


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """``np.linspace(start, end, warmup_steps)[step]`` during warm-up, then ``end``.

    DINO's teacher temperature (per epoch): with ``warmup_steps = 30`` the value reaches
    ``end`` at step 29 (endpoint included).

    Args:
        step: >= 0 (an epoch for the DINO teacher temperature, or an optimizer step).
        warmup_steps: >= 0; 0 gives ``end`` from the start.
        start: first value.
        end: value at the end of warm-up and after.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step >= warmup_steps:
        return end
    return _linspace_at(step, warmup_steps, start, end)


def _check(key: str, ok: bool, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"optim.schedule.{key} must be {expected}, got {value}")


#: Peak lr from the global batch: ``linear_256`` = base_lr * batch / 256 (Goyal et al.
#: 2017; DINO, BYOL), ``sqrt_1024`` = base_lr * sqrt(batch / 1024) (DINOv2), ``none``.
LR_SCALING = {
    "linear_256": lambda batch: batch / 256,
    "sqrt_1024": lambda batch: math.sqrt(batch / 1024),
    "none": lambda batch: 1.0,
}


class Schedule:
    """The run's learning rate and weight decay per optimizer step (the ``optim.schedule``
    config node). Sized once by :meth:`plan` from the run plan; then pure functions of
    the step.

    Args:
        base_lr: learning rate before batch-size scaling (``lr_scaling``).
        lr_scaling: a key of :data:`LR_SCALING`.
        min_lr: final lr of the cosine decay.
        warmup_epochs: linear lr warm-up from 0 (fractions allowed).
        weight_decay, weight_decay_end: cosine weight-decay schedule (DINO: 0.04 -> 0.4).
        freeze_last_layer_epochs: lr of the head's last layer is 0 for this long (DINO).
        iterations_per_epoch: what an "epoch" is for every length given in epochs here
            and in the method (teacher-temperature warm-up): ``null`` = one pass over the
            data in whole batches per process; an int (DINOv2 counts 1250 iterations,
            ``OFFICIAL_EPOCH_LENGTH``); or ``images`` = training images / global batch,
            fractional, as BYOL counts (``max_steps = epochs * N // batch``, warm-up
            ``10 * N // batch``): then ``trainer.max_epochs`` is counted the same way.
        warmup_rule: ``linspace`` (DINO, DINOv2) or ``fraction`` (BYOL), see
            :func:`cosine_schedule`.
    """

    def __init__(
        self,
        base_lr: float = 5e-4,
        lr_scaling: str = "linear_256",
        min_lr: float = 1e-6,
        warmup_epochs: float = 10.0,
        weight_decay: float = 0.04,
        weight_decay_end: float = 0.4,
        freeze_last_layer_epochs: float = 0.0,
        iterations_per_epoch: int | str | None = None,
        warmup_rule: str = "linspace",
    ) -> None:
        _check("base_lr", base_lr > 0, base_lr, "> 0")
        _check("lr_scaling", lr_scaling in LR_SCALING, lr_scaling, f"one of {sorted(LR_SCALING)}")
        _check("min_lr", min_lr >= 0, min_lr, ">= 0")
        _check("warmup_epochs", warmup_epochs >= 0, warmup_epochs, ">= 0")
        _check("weight_decay", weight_decay >= 0, weight_decay, ">= 0")
        _check("weight_decay_end", weight_decay_end >= 0, weight_decay_end, ">= 0")
        _check("freeze_last_layer_epochs", freeze_last_layer_epochs >= 0, freeze_last_layer_epochs, ">= 0")
        _check(
            "iterations_per_epoch",
            iterations_per_epoch in (None, EPOCHS_OF_IMAGES)
            or (isinstance(iterations_per_epoch, int) and not isinstance(iterations_per_epoch, bool)
                and iterations_per_epoch >= 1),
            iterations_per_epoch,
            f"an int >= 1, null for one pass over the data, or {EPOCHS_OF_IMAGES!r} (images / global batch)",
        )
        _check("warmup_rule", warmup_rule in WARMUP_RULES, warmup_rule, f"one of {WARMUP_RULES}")
        self.base_lr = base_lr
        self.lr_scaling = lr_scaling
        self.min_lr = min_lr
        self.warmup_epochs = warmup_epochs
        self.weight_decay = weight_decay
        self.weight_decay_end = weight_decay_end
        self.freeze_last_layer_epochs = freeze_last_layer_epochs
        self.iterations_per_epoch = iterations_per_epoch
        self.warmup_rule = warmup_rule
        self.planned = False
        self.plan(total_steps=1, steps_per_data_epoch=1, global_batch_size=256, images_per_epoch=256)
        self.planned = False

    @property
    def epochs_of_images(self) -> bool:
        """True when an epoch is counted in images (``iterations_per_epoch: images``)."""
        return self.iterations_per_epoch == EPOCHS_OF_IMAGES

    def plan(self, total_steps: int, steps_per_data_epoch: int, global_batch_size: int,
             images_per_epoch: int | None = None) -> None:
        """Size the schedule for a run of ``total_steps`` optimizer steps with
        ``steps_per_data_epoch`` steps per pass over the data, this global batch and
        ``images_per_epoch`` training images (needed by ``iterations_per_epoch: images``)."""
        self.total_steps = max(int(total_steps), 1)
        if self.epochs_of_images:
            if not images_per_epoch:
                raise ValueError(
                    "optim.schedule.iterations_per_epoch=images counts epochs in images, but the "
                    "training set has no known size: give the data its length or set an int"
                )
            self.epoch_steps = Fraction(int(images_per_epoch), int(global_batch_size))
        else:
            self.epoch_steps = Fraction(max(int(self.iterations_per_epoch or steps_per_data_epoch), 1))
        self.steps_per_epoch = max(math.floor(self.epoch_steps), 1)
        self.peak_lr = self.base_lr * LR_SCALING[self.lr_scaling](global_batch_size)
        self.warmup_steps = min(self.epochs_to_steps(self.warmup_epochs), self.total_steps)
        self.freeze_last_layer_steps = min(self.epochs_to_steps(self.freeze_last_layer_epochs), self.total_steps)
        self.planned = True

    def epochs_to_steps(self, epochs: float) -> int:
        if self.epochs_of_images:  # BYOL: 10 * N // batch, an exact integer floor
            return math.floor(Fraction(epochs) * self.epoch_steps)
        return int(math.ceil(epochs * self.steps_per_epoch))

    def lr_at(self, step: int) -> float:
        return cosine_schedule(step, self.total_steps, self.peak_lr, self.min_lr, warmup_steps=self.warmup_steps,
                               warmup_rule=self.warmup_rule)

    def wd_at(self, step: int) -> float:
        return cosine_schedule(step, self.total_steps, self.weight_decay, self.weight_decay_end)

    def last_layer_lr_at(self, step: int) -> float:
        return 0.0 if step < self.freeze_last_layer_steps else self.lr_at(step)


def describe_lr_scaling(schedule: Schedule, global_batch_size: int) -> str:
    """``base_lr 4e-03 x sqrt(64/1024) = 1e-03`` for the run's notices."""
    factor = {"linear_256": f"{global_batch_size}/256", "sqrt_1024": f"sqrt({global_batch_size}/1024)",
              "none": "1"}[schedule.lr_scaling]
    peak = schedule.base_lr * LR_SCALING[schedule.lr_scaling](global_batch_size)
    return f"optim.schedule.base_lr {schedule.base_lr:.3g} x {factor} (lr_scaling={schedule.lr_scaling}) = {peak:.3g}"
