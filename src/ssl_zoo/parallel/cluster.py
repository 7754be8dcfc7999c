"""Runs launched by a cluster: torchrun, SLURM (docs/cluster.md).

- :func:`cluster_environment` is the ``trainer=multinode`` preset's cluster plugin: under
  SLURM, Lightning's ``SLURMEnvironment`` with auto-requeue on the preemption signal; under
  torchrun (or nothing) what Lightning would detect itself.
- Preemption is handled by ``callbacks/resume.py`` (``ResumeState``), not by Lightning's
  handlers (Lightning saves from inside the signal handler, in the middle of a step): on
  the requeue signal it saves ``last.ckpt`` at the next step boundary, stops, and, when the
  cluster environment asks for auto-requeue, requeues the job (:func:`requeue_slurm_job`).
  The requeued job runs the same command: give it a fixed ``hydra.run.dir`` and
  ``resume=auto`` and it continues from that checkpoint.
- :func:`check_launch`: processes started by an external launcher each compose their own
  config, so they must be told one run directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from typing import Any

from lightning.fabric.plugins.environments import (
    ClusterEnvironment,
    KubeflowEnvironment,
    LightningEnvironment,
    LSFEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)

from ssl_zoo.errors import ConfigError


def cluster_environment(auto_requeue: bool = True, requeue_signal: str = "SIGUSR1") -> ClusterEnvironment:
    """The environment this process was launched in (as Lightning detects it), with SLURM's
    requeue settings applied.

    Args:
        auto_requeue: under SLURM, requeue the job when ``requeue_signal`` arrives (after
            the checkpoint is saved). Lightning's default, stated here.
        requeue_signal: the signal SLURM sends before the time limit or a preemption
            (``#SBATCH --signal=USR1@120``).
    """
    try:
        signum = signal.Signals[requeue_signal]
    except KeyError:
        raise ValueError(f"trainer.plugins: unknown requeue_signal {requeue_signal!r} (e.g. SIGUSR1)") from None
    if SLURMEnvironment.detect():
        return SLURMEnvironment(auto_requeue=auto_requeue, requeue_signal=signum)
    for environment in (TorchElasticEnvironment, KubeflowEnvironment, LSFEnvironment):
        if environment.detect():
            return environment()
    return LightningEnvironment()


def requeue_signal(trainer: Any) -> signal.Signals | None:
    """The signal on which this run should requeue its SLURM job (None: no auto-requeue).

    Jobs submitted by submitit (``hydra/launcher=slurm``) are warned with submitit's signal
    (SIGUSR2: ``#SBATCH --signal=USR2@<signal_delay_s>``), whatever the trainer's preset says.
    """
    environment = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
    if not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue):
        return None
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        from submitit.slurm.slurm import SlurmJobEnvironment

        return signal.Signals[f"SIG{SlurmJobEnvironment.USR_SIG}"]
    return environment.requeue_signal


def requeue_slurm_job() -> str:
    """``scontrol requeue`` this job (array task); returns what happened, for the log."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID", "")
    if not re.fullmatch(r"[0-9_]+", job_id):
        return f"not requeued: no SLURM job id in the environment (SLURM_JOB_ID={job_id!r})"
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"requeueing SLURM job {job_id} failed: {err}"
    if result.returncode:
        return f"requeueing SLURM job {job_id} failed: {result.stderr.strip() or result.returncode}"
    return f"requeued SLURM job {job_id}"


def external_launcher() -> str | None:
    """The launcher that started this process as one of several, if any."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and "TORCHELASTIC_RUN_ID" in os.environ:
        return "torchrun"
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and SLURMEnvironment.detect():
        return "srun"
    return None


def check_launch() -> None:
    """ConfigError when processes started by torchrun / srun would each name their own run
    directory (Hydra's default is the start time: two processes rarely agree, and with
    ``resume=auto`` they would even resume from different checkpoints)."""
    launcher = external_launcher()
    if launcher is None:
        return
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # train() called outside a Hydra job: the caller chose the directory
        return
    if hydra_cfg.mode != RunMode.RUN:
        # A sweep's job directories were fixed when it was launched; a config composed in
        # code (ssl_zoo.config.compose_config) was given its directory by the caller.
        return
    overrides = [*hydra_cfg.overrides.hydra, *hydra_cfg.overrides.task]
    if not any(o.split("=", 1)[0].lstrip("+") in ("hydra.run.dir", "hydra.sweep.dir") for o in overrides):
        example = "outputs/$SLURM_JOB_ID" if launcher == "srun" else "outputs/<run name>"
        raise ConfigError(
            f"hydra.run.dir is not set, and under {launcher} every process would name its own run directory "
            f"from its start time: give all processes the same one, e.g. hydra.run.dir={example}"
        )
