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
) -> float:
    """Freeze, linear warm-up, then half-cosine from ``base`` to ``final``.

    Steps ``[0, freeze)`` give 0; steps ``[freeze, freeze + warmup)`` follow
    ``np.linspace(warmup_start, base, warmup_steps)`` (the last warm-up step is already
    ``base``); the ``n = total - freeze - warmup`` remaining steps give
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
    if step >= total_steps:
        return final
    if step < freeze_steps:
        return 0.0
    step -= freeze_steps
    if step < warmup_steps:
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
