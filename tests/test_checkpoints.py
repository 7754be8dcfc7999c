"""Reading a training checkpoint back: config inside, backbone weights, clear refusals."""

from __future__ import annotations

import pickle

import pytest
import torch

from ssl_zoo.weights.load import CheckpointError, load_backbone, load_checkpoint, run_config
from tests.conftest import TINY_DATA, read_summary, run_cli


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    result = run_cli(["train", *TINY_DATA, "trainer.max_steps=2", "callbacks.knn=null", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def test_checkpoint_carries_its_config_and_rebuilds_the_teacher(tiny_run):
    ckpt = read_summary(tiny_run)["checkpoint"]
    checkpoint = load_checkpoint(ckpt)
    assert checkpoint["ssl_zoo_config"]["backbone"]["model_name"] == "resnet10t"
    backbone, cfg = load_backbone(ckpt, which="teacher")
    assert cfg.trainer.max_steps == 2
    images = torch.randn(2, 3, 32, 32)
    student, _ = load_backbone(ckpt, which="student")
    with torch.no_grad():
        teacher_features, student_features = backbone(images)["cls"], student(images)["cls"]
    # After 2 steps the EMA teacher trails the student: both load, and they differ.
    assert teacher_features.shape == (2, 512)
    assert not torch.allclose(teacher_features, student_features)
    key = "conv1.0.weight"
    assert torch.equal(backbone.model.state_dict()[key], checkpoint["state_dict"][f"teacher.backbone.model.{key}"])


def test_config_falls_back_to_the_run_directory(tiny_run, tmp_path):
    ckpt = read_summary(tiny_run)["checkpoint"]
    checkpoint = load_checkpoint(ckpt)
    del checkpoint["ssl_zoo_config"]
    assert run_config(ckpt, checkpoint).backbone.model_name == "resnet10t"
    moved = tmp_path / "moved.ckpt"
    torch.save(checkpoint, moved)
    with pytest.raises(CheckpointError, match="holds no run config"):
        run_config(moved)


def test_bad_files_are_refused_with_the_file_named(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.ckpt: the file is empty"):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.ckpt: cannot be read"):
        load_checkpoint(garbage)
    bare = tmp_path / "bare.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bare)
    with pytest.raises(CheckpointError, match="no 'state_dict' inside"):
        load_checkpoint(bare)


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    crafted = tmp_path / "crafted.ckpt"
    with open(crafted, "wb") as f:
        pickle.dump({"state_dict": {}, "x": _Exploit()}, f)
    with pytest.raises(CheckpointError, match="pickled code, which is refused"):
        load_checkpoint(crafted)


def test_resume_from_a_bad_or_foreign_checkpoint_fails_before_training(tiny_run, tmp_path):
    ckpt = read_summary(tiny_run)["checkpoint"]
    run_dir = tmp_path / "resume"
    foreign = run_cli(["train", *TINY_DATA, "method=byol", "trainer.max_steps=3", f"ckpt_path={ckpt}",
                       f"hydra.run.dir={run_dir}"])
    assert foreign.returncode == 1 and "Traceback" not in foreign.stderr
    assert f"ckpt_path={ckpt}: does not fit this run's BYOL on backbone=resnet10t (written by DINO" in foreign.stderr
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(open(ckpt, "rb").read()[:5000])
    cut = run_cli(["train", *TINY_DATA, "trainer.max_steps=3", f"ckpt_path={truncated}", f"hydra.run.dir={run_dir}"])
    assert cut.returncode == 1 and "Traceback" not in cut.stderr
    assert "truncated.ckpt: cannot be read" in cut.stderr
    assert not (run_dir / "checkpoints").exists()
