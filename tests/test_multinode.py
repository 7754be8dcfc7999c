"""Multi-node through the real CLI: `torchrun --nnodes 2` as two agents on localhost (the
c10d rendezvous on 127.0.0.1 stands in for two machines), then the checkpoint resumed in a
single process; and SLURM's preemption signal with auto-requeue (a stand-in `scontrol`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT, TINY_DATA, TINY_HEAD, read_summary, run_cli, wait_for_file

pytestmark = pytest.mark.slow

QUIET = ["callbacks.knn=null", "callbacks.curve=null", "callbacks.progress=null"]
# One thread per process: two processes share the 2 cores of a CI machine.
ENV = {"OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(REPO_ROOT / "src")}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_with_torchrun_then_resume_in_one_process(tmp_path):
    run_dir, port = tmp_path / "two_nodes", _free_port()
    args = ["train", "trainer=multinode", "trainer.accelerator=cpu", "trainer.num_nodes=2", "trainer.devices=1",
            *TINY_DATA, *TINY_HEAD, *QUIET, "trainer.max_steps=3"]
    agents = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "ssl_zoo_test",
             "-m", "ssl_zoo.cli", *args, f"hydra.run.dir={run_dir}"],
            cwd=REPO_ROOT, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for _ in range(2)
    ]
    outputs = [agent.communicate(timeout=600)[0] for agent in agents]
    for agent, output in zip(agents, outputs):
        assert agent.returncode == 0, output[-3000:]
    # One process on each "node": global ranks 0 and 1 of a world of 2.
    everything = "\n".join(outputs)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in everything and "GLOBAL_RANK: 1, MEMBER: 2/2" in everything
    summary = read_summary(run_dir)
    assert summary["steps"] == 3
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3 and checkpoint["ssl_zoo_resume"]["data"]["world_size"] == 2

    # The same run continues in one process (another world size: the data order differs, said so).
    single = tmp_path / "single"
    result = run_cli(["train", *TINY_DATA, *TINY_HEAD, *QUIET, "trainer.max_steps=5",
                      f"ckpt_path={run_dir}/checkpoints/last.ckpt", f"hydra.run.dir={single}"], env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_summary(single)["steps"] == 5
    assert "on 2 process(es), this run has 32 on 1" in result.stderr


def test_processes_of_an_external_launcher_need_one_run_directory(tmp_path):
    # What torchrun sets in each process; the run stops before anything is built.
    # (in tmp_path: Hydra creates its default run directory before the run starts)
    result = subprocess.run([sys.executable, "-m", "ssl_zoo.cli", "train", *TINY_DATA, "trainer.max_steps=1"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, **ENV, "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "test"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ssl-zoo train: error: hydra.run.dir is not set, and under torchrun every process would name its own run "
        "directory from its start time: give all processes the same one, e.g. hydra.run.dir=outputs/<run name>")


def test_slurm_requeue_signal_saves_requeues_and_the_requeued_job_resumes(tmp_path):
    """A one-task SLURM job (its environment variables; `scontrol` a stand-in that records
    its arguments) gets SIGUSR1, as `#SBATCH --signal=USR1@120` sends before the time limit."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "ssl", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_NNODES": "1", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_NODEID": "0", "MASTER_PORT": str(_free_port()), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    run_dir, steps = tmp_path / "job", 12
    command = [sys.executable, "-m", "ssl_zoo.cli", "train", "trainer=multinode", "trainer.accelerator=cpu",
               "trainer.num_nodes=1", "trainer.devices=1", *TINY_DATA, *TINY_HEAD, *QUIET, f"trainer.max_steps={steps}",
               "callbacks.checkpoint.every_n_train_steps=1", f"hydra.run.dir={run_dir}", "resume=auto"]
    env = {**os.environ, **ENV, **slurm}
    job = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_file(job, run_dir / "checkpoints" / "step0000002.ckpt")
    job.send_signal(signal.SIGUSR1)
    output = job.communicate(timeout=600)[0]
    assert job.returncode == 0, output[-3000:]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert 2 <= saved < steps
    assert f"preempted (SIGUSR1) at step {saved}" in output and "requeued SLURM job 4242" in output, output[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    # SLURM starts the requeued job with the same command and job id.
    again = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resume=auto: continuing from {run_dir}/checkpoints/" in again.stderr
    assert read_summary(run_dir)["steps"] == steps
    assert calls.read_text().split() == ["requeue", "4242"]  # requeued once, not at the end
