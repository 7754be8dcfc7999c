"""Exact resume and preemption through the real CLI: runs killed with SIGKILL (or stopped by
SIGTERM) and resumed end bitwise equal to an uninterrupted run."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_zoo.data.sampling import EpochSampler
from ssl_zoo.weights.load import newest_checkpoint
from tests.conftest import REPO_ROOT, TINY_HEAD, TINY_VIT, run_cli, wait_for_file

pytestmark = pytest.mark.slow

# 96 images / 16 per batch = 6 steps per epoch; 12 steps = 2 epochs. DINOv2 on a tiny ViT
# with drop path covers the teacher, the centres, iBOT masks (collate) and the model's own
# randomness; two workers cover worker seeding.
STEPS = 12
ARGS = [
    "train", "method=dinov2", *TINY_VIT, "backbone.drop_path_rate=0.1", *TINY_HEAD,
    "data.train_set.num_images=96", "data.knn_val_set.num_images=32", "data.batch_size=16",
    "data.num_workers=2", "logger=csv", "callbacks.knn=null", "callbacks.curve=null", "callbacks.progress=null",
    f"trainer.max_steps={STEPS}", "callbacks.checkpoint.every_n_train_steps=1", "callbacks.checkpoint.save_top_k=-1",
]
# Same thread count in every run: a different one may change float summation order.
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}


def _popen(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ssl_zoo.cli", *ARGS, f"hydra.run.dir={run_dir}", *extra],
        cwd=REPO_ROOT, env={**os.environ, "HYDRA_FULL_ERROR": "0", **ENV},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _step_file(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step{step:07d}.ckpt"


def _keep_up_to(run_dir: Path, step: int) -> None:
    """As if the kill had come right after step ``step`` was saved: the run may have gone a
    step further between the file appearing and the kill."""
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        if torch.load(path, map_location="cpu", weights_only=True)["global_step"] > step:
            path.unlink()


def _final_state(run_dir: Path) -> dict:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == STEPS
    return checkpoint


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a["state_dict"].keys() == b["state_dict"].keys()
    different = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"
    # the teacher, its centres and the student are all in the state dict
    assert any(k.startswith("teacher.") for k in a["state_dict"])
    assert any("center" in k for k in a["state_dict"])
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        assert opt_a["state"].keys() == opt_b["state"].keys()
        for index, state in opt_a["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b["state"][index][name])), (index, name)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("full")
    process = _popen(run_dir)
    output, _ = process.communicate(timeout=1800)
    assert process.returncode == 0, output[-3000:]
    return _final_state(run_dir)


def test_sigkill_at_three_points_then_resume_auto_is_bitwise_exact(tmp_path, uninterrupted):
    """One run directory, killed with SIGKILL three times (mid-epoch; on the last step of
    epoch 0; on the first step of epoch 1), each time continued with resume=auto."""
    run_dir = tmp_path / "run"
    for kill_after in (3, 6, 7):
        process = _popen(run_dir, "resume=auto")
        wait_for_file(process, _step_file(run_dir, kill_after))
        process.send_signal(signal.SIGKILL)
        output, _ = process.communicate()
        if kill_after > 3:
            assert f"resume=auto: continuing from {run_dir}/checkpoints/" in output, output[-3000:]
        _keep_up_to(run_dir, kill_after)
    process = _popen(run_dir, "resume=auto")
    output, _ = process.communicate(timeout=1800)
    assert process.returncode == 0, output[-3000:]
    assert "resume: data continues at epoch 1 after 16 samples" in output, output[-3000:]
    _assert_bitwise_equal(_final_state(run_dir), uninterrupted)


def test_sigterm_saves_stops_cleanly_and_prints_the_resume_command(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    process = _popen(run_dir)
    wait_for_file(process, _step_file(run_dir, 4))
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-3000:]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert 4 <= saved["global_step"] < STEPS
    assert f"preempted (SIGTERM) at step {saved['global_step']}" in output
    command = output.split("Resume with:\n", 1)[1].splitlines()[0].strip()
    args = shlex.split(command)
    assert args[:2] == ["ssl-zoo", "train"] and args[-1] == "resume=auto" and f"hydra.run.dir={run_dir}" in args
    resumed = subprocess.run([sys.executable, "-m", "ssl_zoo.cli", *args[1:]], cwd=REPO_ROOT, capture_output=True,
                             text=True, env={**os.environ, **ENV}, timeout=1800)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_bitwise_equal(_final_state(run_dir), uninterrupted)


def test_newest_checkpoint_prefers_the_highest_step_then_last(tmp_path):
    assert newest_checkpoint(tmp_path / "nothing") == (None, [])
    torch.save({"global_step": 4, "state_dict": {}}, tmp_path / "step0000004.ckpt")
    torch.save({"global_step": 6, "state_dict": {}}, tmp_path / "step0000006.ckpt")
    torch.save({"global_step": 6, "state_dict": {}}, tmp_path / "last.ckpt")
    (tmp_path / "step0000008.ckpt").write_bytes(b"truncated")
    path, skipped = newest_checkpoint(tmp_path)
    assert path == tmp_path / "last.ckpt" and skipped and "step0000008.ckpt" in skipped[0]


def test_resume_auto_in_an_empty_run_dir_starts_fresh_and_says_so(tmp_path):
    result = run_cli([*ARGS, "trainer.max_steps=1", "data.num_workers=0", "resume=auto",
                      f"hydra.run.dir={tmp_path / 'run'}"], env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resume=auto: no checkpoint in" in result.stdout + result.stderr


def test_sampler_is_a_function_of_seed_and_epoch_sharded_and_resumable():
    full = list(EpochSampler(10, seed=3, epoch=2))
    assert full == list(EpochSampler(10, seed=3, epoch=2)) and full != list(EpochSampler(10, seed=3, epoch=1))
    assert sorted(i for i, _ in full) == list(range(10))
    assert list(EpochSampler(10, seed=3, epoch=2, start=4)) == full[4:]
    shards = [list(EpochSampler(10, seed=3, rank=r, world_size=3, epoch=2)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)  # padded like DistributedSampler: 12 = 10 + the first 2 again
    indices = [i for s in shards for i, _ in s]
    assert sorted(indices) == sorted([*range(10), full[0][0], full[1][0]])
    assert len({seed for s in shards for _, seed in s}) == 12  # the repeats get their own augmentations
    resumed = EpochSampler(10, seed=3, epoch=2, start=4)
    list(resumed)
    assert list(resumed) == full  # the offset applies to the first iteration only
