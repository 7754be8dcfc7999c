"""Shared helpers: compose the real Hydra config, run the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from ssl_zoo.config import compose_config  # noqa: F401  (re-exported for the tests)

# The presets' default trainer.precision is the fastest on the machine (ssl_zoo/parallel/precision.py):
# pinned for the tests, so that their numerics and tolerances do not depend on the CPU of the
# CI machine. tests/test_precision.py tests the choice itself. Inherited by CLI subprocesses.
os.environ.setdefault("SSL_ZOO_AUTO_PRECISION", "32-true")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SSL_ZOO_SHARED_DIR", REPO_ROOT.parent / "shared"))

# Small and quick everywhere: a few hundred 32 px shapes, no workers, CSV logs.
TINY_DATA = [
    "data.train_set.num_images=256",
    "data.knn_val_set.num_images=128",
    "data.batch_size=32",
    "data.num_workers=0",
    "logger=csv",
]
TINY_VIT = ["backbone=vit_tiny", "backbone.depth=2", "+backbone.embed_dim=64", "+backbone.num_heads=2"]
TINY_HEAD = ["method.out_dim=256", "method.hidden_dim=128", "method.bottleneck_dim=64"]


@pytest.fixture
def compose_cfg(tmp_path):
    def _compose(overrides: list[str]) -> DictConfig:
        return compose_config(overrides, tmp_path)

    yield _compose
    GlobalHydra.instance().clear()


def run_cli(args: list[str], timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `ssl-zoo ...` as a user would (fresh process)."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ssl_zoo.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=full_env,
    )


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def wait_for_file(process: subprocess.Popen, path: Path, timeout: float = 900) -> None:
    """Block until ``process`` writes ``path``; fail if it ends first or takes too long."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before writing {path.name}:\n{process.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.05)

