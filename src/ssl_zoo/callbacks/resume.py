"""What a checkpoint needs beyond Lightning's own state for an exact resume, and preemption.

Lightning saves the model (student, teacher, centres), the optimizer, the AMP scaler and
the loop counters (global step). This callback adds, under ``ssl_zoo_resume``:

- the random generators of the main process (torch, CUDA, numpy, python), restored when
  training starts again, so that drop path and anything else drawn in the model continues;
- the data position (epoch, samples this rank consumed in it), handed to the datamodule
  before Lightning builds its loader (``SSLDataModule.resume_at``), so that a mid-epoch
  resume neither repeats nor skips a sample (``ssl_zoo.data.sampling``).

Preemption: on SIGTERM or SIGUSR1 (SLURM sends one before killing a job), to the main
process or to the whole process group, the run saves ``last.ckpt`` at the next safe point
(a step boundary, or before the first step when the signal came while the run started),
stops cleanly (exit code 0) and prints the command that resumes it. The signal handler
only records the signal and data workers ignore it (``ssl_zoo.signals``); evaluation
passes stop early when one is pending. These handlers replace Lightning's: Lightning's
SIGTERM handler raises at the next batch without saving, and its SLURM SIGUSR1 handler
saves from inside the signal handler, in the middle of a step. What Lightning's
SLURM handler does besides is kept: when the cluster environment is a ``SLURMEnvironment``
with ``auto_requeue`` (``trainer=multinode``), its ``requeue_signal`` is handled too and,
after the checkpoint, rank 0 requeues the job (``ssl_zoo.parallel.cluster``).
"""

from __future__ import annotations

import copy
import random
import signal
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector
from torch.utils.data import IterableDataset

from ssl_zoo import run_failure, signals
from ssl_zoo.callbacks.checks import check_arg
from ssl_zoo.callbacks.protocol import RunContext
from ssl_zoo.console import say
from ssl_zoo.errors import one_line
from ssl_zoo.parallel import cluster, collectives

STATE_KEY = "ssl_zoo_resume"


def rng_state() -> dict[str, Any]:
    """The main process's generators, as tensors and plain Python (``weights_only`` loads them)."""
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["key"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def data_position(trainer: L.Trainer) -> dict[str, int]:
    """(epoch, samples this rank consumed in it) at a step boundary."""
    batches = trainer.fit_loop.epoch_loop.batch_progress.current.ready
    epoch = trainer.current_epoch
    if batches >= trainer.num_training_batches:  # saved on the epoch's last batch: the next one
        epoch, batches = epoch + 1, 0
    batch_size = int(getattr(trainer.datamodule, "batch_size", 0) or 0)
    return {"epoch": epoch, "samples": batches * batch_size, "batch_size": batch_size,
            "world_size": trainer.world_size}


class ResumeState(L.Callback):
    """Args:
    preempt_signals: signal names that save a checkpoint and stop (empty: none).
    """

    def __init__(self, preempt_signals: tuple[str, ...] | list[str] = ("SIGTERM", "SIGUSR1")) -> None:
        is_list = not isinstance(preempt_signals, str | None)
        unknown = [n for n in preempt_signals if n not in signal.Signals.__members__] if is_list else []
        check_arg("resume", "preempt_signals", preempt_signals, lambda v: is_list and not unknown,
                  "a list of signal names such as [SIGTERM, SIGUSR1] ([]: none)",
                  hint=f"unknown: {', '.join(map(str, unknown))}" if unknown else "")
        self.signals = [signal.Signals[name] for name in preempt_signals]
        self.resume_command: str | None = None  # printed when preempted (configure_run)
        self.preempted_at: int | None = None  # the step saved on preemption
        self._requeue_on: signal.Signals | None = None  # SLURM auto-requeue's signal, if any
        self._rng_to_restore: dict[str, Any] | None = None
        # The state at the last step boundary (loops, epoch, data position, RNG): what a save
        # after it holds, also when the save comes later (see on_save_checkpoint).
        self._boundary: dict[str, Any] | None = None
        self._saved_step: int | None = None  # the step of this run's newest save
        self.saved_on_error: tuple[int, str] | None = None  # (step, path) saved when the run failed

    def configure_run(self, context: RunContext) -> None:
        self.resume_command = context.resume_command

    def summary(self) -> dict[str, Any]:
        return {"preempted_at_step": self.preempted_at}

    # --- checkpoint contents ------------------------------------------------------------

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._saved_step = trainer.global_step
        boundary = self._current_boundary(trainer)
        if boundary is None:
            checkpoint[STATE_KEY] = {"rng": rng_state(), "data": data_position(trainer)}
            return
        # A save after the last step boundary with no batch started since: the end of a run
        # at trainer.max_steps (Lightning has then closed the epoch, as if it were complete,
        # and a longer run would skip its rest), or a save on a failure between steps. It
        # holds the boundary's state, so it resumes like a save at the boundary: in the same
        # epoch, at the next sample.
        checkpoint["loops"]["fit_loop"] = copy.deepcopy(boundary["fit_loop"])
        checkpoint["epoch"] = boundary["epoch"]
        checkpoint[STATE_KEY] = {"rng": boundary["rng"], "data": boundary["data"]}

    def _current_boundary(self, trainer: L.Trainer) -> dict[str, Any] | None:
        """The state of the last step boundary if nothing ran since (no new batch, no step)."""
        boundary = self._boundary
        if boundary is None or trainer.global_step != boundary["step"]:
            return None
        if trainer.fit_loop.epoch_loop.batch_progress.total.ready != boundary["batches"]:
            return None
        return boundary

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(STATE_KEY)
        datamodule = trainer.datamodule
        if state is None:
            say("resume: the checkpoint holds no RNG or data position (written before exact resume); "
                        "the data restarts at the beginning of its epoch")
            return
        self._rng_to_restore = state["rng"]
        position = state["data"]
        train_set = getattr(datamodule, "train_set", None)
        if isinstance(train_set, IterableDataset):
            say("resume: streamed data (data=shards) restarts its epoch from the beginning; the resume "
                        "is not exact (samples of the interrupted epoch are seen again)")
            return
        if (position["batch_size"], position["world_size"]) != (getattr(datamodule, "batch_size", None),
                                                                  trainer.world_size):
            say(
                "resume: the checkpoint was written with data.batch_size=%s on %s process(es), this run has %s on %s: "
                "the data order of the resumed epoch differs from the interrupted run's",
                position["batch_size"], position["world_size"], getattr(datamodule, "batch_size", None),
                trainer.world_size,
            )
        if hasattr(datamodule, "resume_at"):
            datamodule.resume_at(position["epoch"], position["samples"])
            say("resume: data continues at epoch %d after %d samples of this process",
                     position["epoch"], position["samples"])

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Before any DataLoader forks its workers (they inherit the handler until their
        # init function ignores the signals), and instead of Lightning's handlers.
        self._requeue_on = cluster.requeue_signal(trainer)
        signals.keep_only([*self.signals, *([self._requeue_on] if self._requeue_on else [])])
        trainer._signal_connector = _NoLightningSignalHandlers(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here, not at load time: anything that draws between loading and the first step
        # (building the model, the loaders) then does not shift the restored streams.
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        # A signal that came while the run started (or during the step-0 evaluations,
        # which then stopped early): save before the first step.
        self._preempt_if_signalled(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # ModelCheckpoint writes last.ckpt at the end only if it wrote none before: a run whose
        # trainer.max_steps is not a multiple of every_n_train_steps would end with a last.ckpt
        # of an earlier step. The end of the run is a checkpoint like any other.
        checkpoint = trainer.checkpoint_callback
        if checkpoint is None or not getattr(checkpoint, "save_last", False) or self.preempted_at is not None:
            return
        if checkpoint.last_model_path and self._saved_step != trainer.global_step:
            path = self._last_path(trainer)
            trainer.save_checkpoint(path)
            checkpoint.last_model_path = str(path)

    # --- preemption ---------------------------------------------------------------------

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop.epoch_loop._should_accumulate():
            return  # mid gradient accumulation: not a step boundary
        self._preempt_if_signalled(trainer, pl_module)
        self._boundary = {
            "step": trainer.global_step, "batches": trainer.fit_loop.epoch_loop.batch_progress.total.ready,
            "fit_loop": copy.deepcopy(trainer.fit_loop.state_dict()), "epoch": trainer.current_epoch,
            "data": data_position(trainer), "rng": rng_state(),
        }  # fmt: skip

    # --- a failure during training ------------------------------------------------------

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Save ``last.ckpt`` at the last step boundary when training stops on a failure
        the user can fix (the data went away, a disk filled up): they continue from it.
        Only under one process (a save is collective, the other ranks may not be here)
        and only after a step boundary this run reached."""
        if not run_failure.is_mid_run_failure(exception):
            return
        if trainer.world_size > 1 or not trainer.training or self._current_boundary(trainer) is None:
            return  # several processes, or inside a step: not a boundary to save
        path = self._last_path(trainer)
        try:
            trainer.save_checkpoint(path)
        except Exception as err:  # noqa: BLE001 - e.g. the same full disk: the error says what was kept
            say("could not save a checkpoint after the failure: %s", one_line(err))
            return
        if trainer.checkpoint_callback is not None:
            trainer.checkpoint_callback.last_model_path = str(path)
        self.saved_on_error = (trainer.global_step, str(path))

    def _preempt_if_signalled(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.preempted_at is not None:
            return
        received = signals.pending()
        # [a signal arrived, the requeue signal arrived]
        flags = torch.tensor([received is not None, signals.received(self._requeue_on)], dtype=torch.int32)
        if collectives.is_distributed():
            # Every rank stops at the same step, even if the signal reached only one.
            flags = collectives.all_reduce_sum(flags.to(pl_module.device)).cpu()
        if int(flags[0]) == 0:
            return
        step = trainer.global_step
        path = self._last_path(trainer)
        trainer.save_checkpoint(path)
        if trainer.checkpoint_callback is not None:
            trainer.checkpoint_callback.last_model_path = str(path)
        trainer.should_stop = True
        self.preempted_at = step
        if trainer.is_global_zero:
            name = signal.Signals(received).name if received else "a signal on another process"
            message = f"preempted ({name}) at step {step}: saved {path}"
            if int(flags[1]):
                message += f"\n{cluster.requeue_slurm_job()} (it continues with resume=auto in the same hydra.run.dir)"
            elif self.resume_command:
                message += f"\nResume with:\n  {self.resume_command}"
            say(message)

    @staticmethod
    def _last_path(trainer: L.Trainer) -> Path:
        checkpoint = trainer.checkpoint_callback
        directory = getattr(checkpoint, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
        name = getattr(checkpoint, "CHECKPOINT_NAME_LAST", "last") + getattr(checkpoint, "FILE_EXTENSION", ".ckpt")
        return Path(directory) / name


def was_preempted(trainer: L.Trainer) -> bool:
    return any(isinstance(cb, ResumeState) and cb.preempted_at is not None for cb in trainer.callbacks)


class _NoLightningSignalHandlers(_SignalConnector):
    """Lightning's signal connector without its handlers: its SIGTERM handler would make
    the loop raise at the next batch without saving (and, in a forked data worker, signal
    the other ranks), its SLURM one would save from inside the handler, mid-step."""

    def register_signal_handlers(self) -> None:
        self.received_sigterm = False

    def teardown(self) -> None:
        pass
