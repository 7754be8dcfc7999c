"""Checkpoint writes: complete or absent after a kill, refused when non-finite, disk full."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ssl_zoo.weights.atomic import AtomicCheckpointIO, CheckpointSaveError, atomic_torch_save
from ssl_zoo.weights.load import load_checkpoint

WRITER = """
import sys, torch
from ssl_zoo.weights.atomic import atomic_torch_save
path = sys.argv[1]
version = 0
while True:
    version += 1
    atomic_torch_save({"state_dict": {"w": torch.full((8_000_000,), float(version))}, "version": version}, path)
    print(version, flush=True)
"""


@pytest.mark.parametrize("kill_after", [0.05, 0.35, 0.8])
def test_a_kill_during_a_save_leaves_a_loadable_checkpoint(tmp_path, kill_after):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.zeros(8_000_000)}, "version": 0}, path)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    writer.stdout.readline()  # one save done: the writer now saves back to back
    started = time.perf_counter()
    writer.stdout.readline()
    one_save = time.perf_counter() - started
    time.sleep(kill_after * one_save)  # somewhere inside the next 32 MB save
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    checkpoint = load_checkpoint(path)
    version = checkpoint["version"]
    assert version >= 2
    assert torch.equal(checkpoint["state_dict"]["w"], torch.full((8_000_000,), float(version)))


def test_a_non_finite_model_is_never_saved(tmp_path):
    path = tmp_path / "step.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    with pytest.raises(CheckpointSaveError, match=r"1 model tensors hold NaN/Inf \(e.g. head.w\)"):
        io.save_checkpoint({"state_dict": {"w": torch.ones(3), "head.w": torch.tensor([1.0, float("nan")])}}, path)
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(3))


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(2)}}, path)

    def full_disk(obj, f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointSaveError, match="the disk is full, nothing was written"):
        atomic_torch_save({"state_dict": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind
