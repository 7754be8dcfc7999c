"""The CLI as a user runs it: real processes, real config composition, real files."""

import json

import pytest

from ssl_zoo.train import build_all
from tests.conftest import TINY_DATA, TINY_HEAD, compose_config, read_summary, run_cli

pytestmark = pytest.mark.slow

FAST = [
    "data.train_set.num_images=256",
    "data.knn_val_set.num_images=128",
    "data.batch_size=32",
    "data.num_workers=0",
    "augmentation.transform.n_local=2",
    *TINY_HEAD,
]


def test_train_writes_summary_checkpoint_and_offline_wandb(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["train", "trainer.max_steps=6", *FAST, f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(run_dir)
    for key in ("knn_top1_start", "knn_top1_end", "images_per_sec", "steps", "checkpoint"):
        assert key in summary
    assert summary["steps"] == 6
    assert 0.0 <= summary["knn_top1_start"] <= 1.0 and 0.0 <= summary["knn_top1_end"] <= 1.0
    assert summary["images_per_sec"] > 0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert summary["checkpoint"] == str((run_dir / "checkpoints" / "last.ckpt").resolve())
    # W&B by default, offline: its files land in the run directory, nothing is uploaded.
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline_runs, list(run_dir.iterdir())
    assert "kNN top-1 (k=20, T=0.07)" in result.stdout and "raw pixels" in result.stdout
    assert "Resume" in result.stdout and (run_dir / "learning_curve.png").is_file()


def test_resume_continues_from_the_checkpoint_step(tmp_path):
    first = tmp_path / "first"
    args = ["train", *FAST, "logger=csv", "callbacks.knn=null"]
    assert run_cli([*args, "trainer.max_steps=4", f"hydra.run.dir={first}"]).returncode == 0
    ckpt = first / "checkpoints" / "last.ckpt"
    second = tmp_path / "second"
    result = run_cli([*args, "trainer.max_steps=8", f"ckpt_path={ckpt}", f"hydra.run.dir={second}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_summary(second)["steps"] == 8


def test_help_lists_groups_and_cfg_prints_config():
    result = run_cli(["train", "--help"])
    assert result.returncode == 0
    for group in ("method:", "backbone:", "data:", "trainer:", "logger:", "callbacks:", "experiment:"):
        assert group in result.stdout
    assert "dinov2" in result.stdout and "byol" in result.stdout
    cfg = run_cli(["train", "--cfg", "job", "method=dinov2", "backbone=vit_tiny"])
    assert cfg.returncode == 0
    for key in ("seed:", "max_steps:", "max_epochs:", "batch_size:", "num_workers:", "logger:", "DINOv2"):
        assert key in cfg.stdout


def test_unknown_option_lists_available_choices():
    result = run_cli(["train", "method=foo"])
    assert result.returncode != 0
    assert "method" in result.stderr and "dino" in result.stderr and "byol" in result.stderr


def test_bad_value_fails_before_training_naming_the_key(tmp_path):
    run_dir = tmp_path / "bad"
    result = run_cli(["train", *FAST, "method.teacher_temp=-0.1", f"hydra.run.dir={run_dir}"])
    assert result.returncode != 0
    assert "method.teacher_temp" in result.stderr
    assert not (run_dir / "checkpoints").exists()
    # One readable line, no traceback; --debug brings the traceback back.
    assert "Traceback" not in result.stderr
    assert "ssl-zoo train: error: method.teacher_temp must be > 0, got -0.1" in result.stderr
    debug = run_cli(["--debug", "train", *FAST, "method.teacher_temp=-0.1", f"hydra.run.dir={run_dir}"])
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_unknown_command_is_an_error():
    result = run_cli(["fly"])
    assert result.returncode == 2 and "unknown command" in result.stderr


def test_fast_dev_run_of_the_default_composition(tmp_path):
    """The config `ssl-zoo train` uses, unchanged except for size, through one batch."""
    cfg = compose_config(["+trainer.fast_dev_run=true", "logger=csv", *TINY_DATA], tmp_path)
    assert cfg.method._target_.endswith("DINO") and cfg.backbone.model_name == "resnet10t"
    parts = build_all(cfg)
    parts["trainer"].fit(parts["method"], datamodule=parts["datamodule"])
    assert parts["trainer"].global_step == 1


def test_multirun_of_all_three_methods(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli([
        "train", "-m", "method=byol,dino,dinov2", "backbone=vit_tiny", "backbone.depth=2",
        "trainer.max_steps=3", "logger=csv", "data.train_set.num_images=256", "data.knn_val_set.num_images=128",
        "data.batch_size=32", "data.num_workers=0", f"hydra.sweep.dir={sweep}",
    ], timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = sorted(sweep.glob("*/summary.json"))
    methods = sorted(json.loads(p.read_text())["method"] for p in summaries)
    assert methods == ["BYOL", "DINO", "DINOv2"]


def test_ddp_on_two_cpu_processes(tmp_path):
    """trainer=ddp_cpu: 2 gloo processes through the CLI (Lightning re-launches the Hydra app)."""
    run_dir = tmp_path / "ddp"
    result = run_cli(["train", "trainer=ddp_cpu", "trainer.max_steps=3", *FAST, "logger=csv", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["steps"] == 3
    # each process extracted half of the kNN splits; the gathered bank is the whole split
    assert "(128 queries, 256 in the bank" in result.stderr + result.stdout


def test_the_automatic_precision_choice_trains_unpinned(tmp_path):
    """The path a new user gets: no pin, so the probe measures this CPU (cached in a fresh
    directory) and the run trains in whatever it chose (bf16 where bf16 is faster, with the
    policies of docs/precision.md), with no skipped step and the choice in the summary."""
    run_dir = tmp_path / "run"
    env = {"SSL_ZOO_AUTO_PRECISION": "", "SSL_ZOO_CACHE_DIR": str(tmp_path / "cache")}
    result = run_cli(["train", "trainer.max_steps=20", *FAST, "logger=csv", "callbacks.knn.every_n_steps=0",
                      f"hydra.run.dir={run_dir}"], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(run_dir)
    choice = summary["precision"]
    assert choice["source"] == "auto" and choice["precision"] in ("32-true", "bf16-mixed")
    assert "pinned" not in choice["reason"]
    assert summary["steps"] == 20 and summary["skipped_steps"] == 0 and choice["fp32_fallback_step"] is None
    assert "non-finite" not in result.stderr
    assert f"precision: {choice['precision']} (auto: " in result.stderr
