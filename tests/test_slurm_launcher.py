"""hydra/launcher=slurm: sweeps composed for the hydra-submitit-launcher plugin, and the
sbatch script it would submit (a stand-in `sbatch` records it; no cluster here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from ssl_zoo.config import CONFIG_DIR
from tests.conftest import REPO_ROOT


def test_the_launcher_config_composes_with_documented_defaults_and_overrides():
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                              "hydra.launcher.gpus_per_node=8", "hydra.launcher.tasks_per_node=8"],
                          return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 8, 8)
    assert (launcher.nodes, launcher.timeout_min, launcher.mem_gb, launcher.cpus_per_task) == (1, 240, 64, 10)
    # the preemption signal's lead time, and no second requeue mechanism beside the run's own
    assert launcher.signal_delay_s == 120 and launcher.max_num_timeout == 0
    assert list(launcher.setup) == [] and dict(launcher.additional_parameters) == {}


# Runs the real CLI in a fresh process with the submission stopped at `sbatch` (a script
# that keeps what it was given and answers as sbatch does) and the wait for the jobs'
# results skipped.
SWEEP = textwrap.dedent("""
    import sys
    import submitit
    from hydra.core.utils import JobReturn, JobStatus

    submitit.core.core.Job.results = lambda self: [JobReturn(status=JobStatus.COMPLETED, _return_value=None)]
    from ssl_zoo.cli.main import main

    sys.exit(main(sys.argv[1:]))
""")


def test_a_sweep_submits_one_job_array_with_the_configured_sbatch_options(tmp_path):
    bin_dir, scripts = tmp_path / "bin", tmp_path / "submitted"
    bin_dir.mkdir(), scripts.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {scripts}/\necho "Submitted batch job 777"\n')
    # submitit looks for srun before it submits anything; it is never run here
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-c", SWEEP, "train", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
         "hydra.launcher.timeout_min=30", "hydra.launcher.gpus_per_node=2", "hydra.launcher.tasks_per_node=2",
         "hydra.launcher.setup=[\"echo from-setup\"]", "method=byol,dino", "trainer=gpu", "trainer.devices=2",
         "resume=auto", f"hydra.sweep.dir={sweep}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (script,) = list(scripts.iterdir())  # the two sweep points: one array job
    text = script.read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --ntasks-per-node=2", "#SBATCH --signal=USR2@120", "#SBATCH --array=0-1",
                 "#SBATCH --mem=64GB", "#SBATCH --cpus-per-task=10", "echo from-setup"):
        assert line in text, f"{line!r} not in\n{text}"
    assert "srun" in text and "submitit.core._submit" in text
    assert "#0 : method=byol trainer=gpu trainer.devices=2 resume=auto" in result.stdout
    assert "#1 : method=dino trainer=gpu trainer.devices=2 resume=auto" in result.stdout
    assert len(list((sweep / ".submitit").rglob("*.pkl"))) == 2  # one pickled job per sweep point


def test_the_requeue_signal_is_slurms_or_submitits(monkeypatch):
    from types import SimpleNamespace

    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    from ssl_zoo.parallel.cluster import requeue_signal

    def trainer(environment):
        return SimpleNamespace(_accelerator_connector=SimpleNamespace(cluster_environment=environment))

    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert requeue_signal(trainer(SLURMEnvironment(auto_requeue=True))) == signal.SIGUSR1
    assert requeue_signal(trainer(SLURMEnvironment(auto_requeue=False))) is None
    assert requeue_signal(trainer(LightningEnvironment())) is None
    # a job that submitit started is warned with SIGUSR2 (its sbatch --signal)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert requeue_signal(trainer(SLURMEnvironment(auto_requeue=True))) == signal.SIGUSR2
