"""The run plan: its global batch and how long it is in optimizer steps, from the
trainer's two limits and the data.

Planned once, by ``ssl_zoo.train.build_all`` before training, and handed to the method
(``SSLMethod.plan_run``), which sizes every schedule from it; the recipe parity test
plans with the same rule for a simulated cluster and data size. The rule:

- ``trainer.max_steps > 0`` alone: exactly that many optimizer steps;
- ``trainer.max_epochs`` alone: that many passes over the data;
- both: they must describe the same run, otherwise the run stops at whichever comes first
  (Lightning's rule) and the schedules would be sized for the wrong one, so
  :func:`plan_run_length` refuses it.

The trainer and experiment presets set ``max_epochs: ${epochs_unless_max_steps:E,${.max_steps}}``,
so a ``trainer.max_steps=N`` override on its own means N steps (``max_epochs`` becomes null).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ssl_zoo.errors import UserError


class RunLengthError(UserError):
    """trainer.max_steps / trainer.max_epochs that don't describe one finite run."""


@dataclass(frozen=True)
class RunPlan:
    total_steps: int  # optimizer steps of the whole run
    steps_per_data_epoch: int  # optimizer steps per pass over the training data
    global_batch_size: int  # images per optimizer step over all processes (the lr scales with it)
    images_per_epoch: int | None = None  # training images, when known


def epochs_unless_max_steps(epochs: int | None, max_steps: int | None) -> int | None:
    """The trainer presets' default ``max_epochs``: ``epochs``, or ``None`` once
    ``max_steps`` is set (> 0), so that max_steps alone decides the run length."""
    if max_steps is not None and int(max_steps) > 0:
        return None
    return epochs


def plan_run_length(
    batches_per_epoch: int | float,
    accumulate_grad_batches: int = 1,
    max_epochs: int | None = None,
    max_steps: int | None = -1,
    global_batch_size: int = 1,
    images_per_epoch: int | None = None,
    epochs_of_images: bool = False,
) -> RunPlan:
    """The run's optimizer steps from the trainer limits (``-1`` or ``None`` = unset).

    Args:
        batches_per_epoch: batches per process per pass over the data (Lightning's
            ``trainer.num_training_batches``); ``inf`` for a stream of unknown length.
        accumulate_grad_batches: batches per optimizer step (Lightning steps on the last
            batch of an epoch too, hence the ceil).
        max_epochs, max_steps: ``trainer.max_epochs`` / ``trainer.max_steps``.
        global_batch_size: data.batch_size x processes x accumulate_grad_batches.
        images_per_epoch: training images, when known.
        epochs_of_images: count ``max_epochs`` in images, as BYOL does: ``max_epochs x
            images_per_epoch // global_batch_size`` steps (not whole batches per process
            per pass; ``optim.schedule.iterations_per_epoch: images``).

    Raises:
        RunLengthError: neither limit set, or both set and disagreeing, naming both keys.
    """
    steps_set = max_steps is not None and max_steps > 0
    epochs_set = max_epochs is not None and max_epochs > 0
    finite = math.isfinite(batches_per_epoch)
    per_epoch = math.ceil(batches_per_epoch / accumulate_grad_batches) if finite else None
    if epochs_of_images and epochs_set:
        if not images_per_epoch:
            raise RunLengthError(
                "optim.schedule.iterations_per_epoch=images counts trainer.max_epochs in images, but "
                "the training data has no known length: set trainer.max_steps=N instead"
            )
        in_images = int(max_epochs) * int(images_per_epoch) // int(global_batch_size)
        if steps_set and max_steps != in_images:
            raise RunLengthError(
                f"trainer.max_steps={max_steps} and trainer.max_epochs={max_epochs} disagree: "
                f"{max_epochs} epochs of {images_per_epoch} images at a global batch of "
                f"{global_batch_size} are {in_images} optimizer steps. Keep one and set the other to null"
            )
        if in_images < 1:
            raise RunLengthError(
                f"trainer.max_epochs={max_epochs} of {images_per_epoch} images at a global batch of "
                f"{global_batch_size} is not one optimizer step: raise trainer.max_epochs"
            )
        return RunPlan(in_images, per_epoch or in_images, int(global_batch_size), images_per_epoch)
    if per_epoch == 0:
        raise RunLengthError(
            "an epoch has no full batch: the training set is smaller than data.batch_size "
            "x devices x num_nodes; lower data.batch_size or add data"
        )
    if not steps_set and not epochs_set:
        raise RunLengthError(
            f"trainer.max_steps={max_steps} and trainer.max_epochs={max_epochs}: the run has "
            "no end; set trainer.max_steps=N (optimizer steps) or trainer.max_epochs=N"
        )
    if not finite:
        if not steps_set:
            raise RunLengthError(
                f"the training data has no known length, so trainer.max_epochs={max_epochs} "
                "gives no step count for the schedules: set trainer.max_steps=N (and "
                "trainer.max_epochs=null), or give data=shards its index / data.num_samples"
            )
        return RunPlan(int(max_steps), int(max_steps), int(global_batch_size), images_per_epoch)
    if steps_set and epochs_set and max_steps != max_epochs * per_epoch:
        raise RunLengthError(
            f"trainer.max_steps={max_steps} and trainer.max_epochs={max_epochs} disagree: "
            f"{max_epochs} epochs of this data are {max_epochs} x {per_epoch} = "
            f"{max_epochs * per_epoch} optimizer steps. Keep one and set the other to null "
            f"(e.g. trainer.max_epochs=null to run exactly {max_steps} steps)"
        )
    total = int(max_steps) if steps_set else int(max_epochs) * per_epoch
    return RunPlan(total, per_epoch, int(global_batch_size), images_per_epoch)
