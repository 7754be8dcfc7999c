"""Preemption as clusters deliver it, and runs independent of their evaluations, through
the real CLI.

SIGTERM goes to the whole process group (GNU ``timeout``, SLURM, Kubernetes), data workers
included, at a moment read from the run's own output or files: at start, during the kNN
pass, during training steps. The run must save, print the resume command once, exit 0
without a traceback, and continue from the checkpoint to the same weights, bit for bit,
as a run never interrupted. kNN cadence, kNN off and the probe on must not change the
weights either.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, run_cli

pytestmark = pytest.mark.slow

STEPS = 8
# DINO on resnet10t with drop path: the student draws from the global generator every step
# (anything else drawing from it would shift training) and the teacher has BatchNorm (kNN
# recalibrates it before step 0). Small kNN batches make the kNN pass long enough to land in.
ARGS = [
    "train", "+backbone.drop_path_rate=0.1", "method.out_dim=256", "method.hidden_dim=128",
    "method.bottleneck_dim=64", "data.train_set.num_images=128", "data.knn_val_set.num_images=64",
    "data.batch_size=16", "+data.knn_batch_size=8", "data.num_workers=2", "logger=csv",
    "callbacks.curve=null", "callbacks.progress=null", "callbacks.viz.every_n_steps=4",
    "callbacks.knn.every_n_steps=4", "callbacks.checkpoint.every_n_train_steps=2", f"trainer.max_steps={STEPS}",
]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src"), "HYDRA_FULL_ERROR": "0"}


class Run:
    """``ssl-zoo train`` in its own process group (a session), its output read as it comes."""

    def __init__(self, run_dir: Path, *extra: str) -> None:
        self.run_dir = run_dir
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ssl_zoo.cli", *ARGS, f"hydra.run.dir={run_dir}", *extra],
            cwd=REPO_ROOT, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.out) + "".join(self.err)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"the run ended before {what}:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} after {timeout} s"
            time.sleep(0.02)

    def signal_group(self, signum: int = signal.SIGTERM) -> None:
        os.killpg(os.getpgid(self.process.pid), signum)

    def finish(self, timeout: float = 900) -> int:
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return code


def _state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] == STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys()
    different = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for index, state in opt_a["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b["state"][index][name])), (index, name)


def _preempt_and_resume(run_dir: Path, moment: Callable[[Run], None], *extra: str) -> tuple[str, dict]:
    """Start a run, signal its process group at ``moment``, check the stop, resume with the
    printed command; returns (the preempted run's output, the final checkpoint)."""
    run = Run(run_dir, *extra)
    moment(run)
    run.signal_group()
    code = run.finish()
    stderr, output = "".join(run.err), run.output
    assert code == 0, output[-3000:]
    assert "Traceback" not in output and "killed by signal" not in output, output[-3000:]
    saved = _state(run_dir)
    assert saved["global_step"] < STEPS, "the run was not stopped"
    assert f"preempted (SIGTERM) at step {saved['global_step']}" in stderr, output[-3000:]
    assert output.count("Resume with:") == 1 and "ckpt_path=" not in output.split("Resume with:", 1)[1], output[-3000:]
    command = shlex.split(output.split("Resume with:\n", 1)[1].splitlines()[0].strip())
    assert command[:2] == ["ssl-zoo", "train"] and command[-1] == "resume=auto"
    resumed = subprocess.run([sys.executable, "-m", "ssl_zoo.cli", *command[1:]], cwd=REPO_ROOT,
                             env={**os.environ, **ENV}, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    return output, _state(run_dir)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("full")
    run = Run(run_dir)
    assert run.finish() == 0, run.output[-3000:]
    return _state(run_dir)


def _at_start(run: Run) -> None:
    # Hydra has written the run's config: the process is composing and building, long
    # before the first step.
    run.wait_for(lambda: (run.run_dir / ".hydra" / "config.yaml").exists(), "the run directory")


def _during_knn(run: Run) -> None:
    # Printed after the raw-pixel pass, right before the BatchNorm recalibration and the
    # step-0 kNN pass over 24 batches of 8 images.
    run.wait_for(lambda: "on raw pixels" in run.output, "the raw-pixel kNN line")


def _during_steps(run: Run) -> None:
    run.wait_for(lambda: (run.run_dir / "checkpoints" / "step0000002.ckpt").exists(), "the step-2 checkpoint")


@pytest.mark.parametrize("moment", [_at_start, _during_knn, _during_steps], ids=["start", "knn_pass", "steps"])
def test_sigterm_to_the_process_group_saves_and_resumes_bitwise(tmp_path, uninterrupted, moment):
    output, final = _preempt_and_resume(tmp_path / "run", moment)
    if moment is _during_knn:
        assert "stopped: a preemption signal arrived" in output, output[-3000:]
    _assert_bitwise_equal(final, uninterrupted)


def test_sigterm_to_the_process_group_under_ddp_cpu(tmp_path):
    """Two processes, each with two workers, all signalled during training steps."""
    ddp = ["trainer=ddp_cpu", "data.batch_size=8"]
    _, final = _preempt_and_resume(tmp_path / "run", _during_steps, *ddp)
    assert final["global_step"] == STEPS


def test_evaluations_do_not_change_training(tmp_path):
    """The same weights after the same steps with kNN every 2 or 3 steps, kNN off, or the
    probe on: evaluation draws from its own random streams and gives BatchNorm its
    statistics back."""
    base = [a for a in ARGS if not a.startswith(("callbacks.knn.every_n_steps", "data.num_workers"))]
    variants = {
        "knn_every_2": ["callbacks.knn.every_n_steps=2"],
        "knn_every_3": ["callbacks.knn.every_n_steps=3"],
        "knn_off": ["callbacks.knn=null", "callbacks.viz=null"],
        "probe_on": ["callbacks.knn.every_n_steps=3",
                     "callbacks.probe={_target_: ssl_zoo.callbacks.probe.OnlineLinearProbe, every_n_steps: 2}"],
    }
    states = {}
    for name, extra in variants.items():
        run_dir = tmp_path / name
        result = run_cli([*base, "data.num_workers=0", *extra, f"hydra.run.dir={run_dir}"], env=ENV)
        assert result.returncode == 0, result.stderr[-3000:]
        states[name] = _state(run_dir)
    for name in ("knn_every_3", "knn_off", "probe_on"):
        _assert_bitwise_equal(states[name], states["knn_every_2"])


def test_sigusr1_to_the_process_group_during_the_knn_pass_saves_without_a_traceback(tmp_path):
    run = Run(tmp_path / "run")
    _during_knn(run)
    run.signal_group(signal.SIGUSR1)
    assert run.finish() == 0, run.output[-3000:]
    assert "Traceback" not in run.output and "killed by signal" not in run.output, run.output[-3000:]
    assert "preempted (SIGUSR1) at step 0" in run.output and run.output.count("Resume with:") == 1
    assert _state(tmp_path / "run")["global_step"] == 0
