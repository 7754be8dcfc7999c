"""A hierarchical timm backbone added by its adapter alone: backbone=convnext_atto trains
DINO for 20 steps through the CLI, in one process and sharded under trainer=fsdp_cpu."""

from __future__ import annotations

import math
import os

import lightning as L
import pytest

from tests.conftest import REPO_ROOT, TINY_DATA, TINY_HEAD, read_summary, run_cli

pytestmark = pytest.mark.slow

REPORT = "+callbacks.report._target_=tests.test_convnext.ShardingReport"
CONVNEXT_DINO = ["method=dino", "backbone=convnext_atto", "trainer.max_steps=20", *TINY_DATA, *TINY_HEAD,
                 "data.batch_size=16", "callbacks.knn=null", "callbacks.viz=null", REPORT]
BLOCKS = [f"stages.{s}.blocks.{b}" for s, depth in enumerate((2, 2, 6, 2)) for b in range(depth)]


class ShardingReport(L.Callback):
    """summary.json keys for these tests: every step's loss, and which modules FSDP2 made
    units of, with the local share of their parameters on this process."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.units: dict[str, float] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor

        for name, module in pl_module.named_modules():
            if isinstance(module, FSDPModule):
                params = [p for p in module.parameters() if isinstance(p, DTensor)]
                local = sum(p.to_local().numel() for p in params)
                self.units[name] = local / max(sum(p.numel() for p in params), 1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def summary(self) -> dict:
        return {"test_losses": self.losses, "test_fsdp_units": self.units}


def _check_losses(summary: dict) -> list[float]:
    losses = summary["test_losses"]
    assert summary["steps"] == 20 and len(losses) == 20
    assert all(math.isfinite(loss) for loss in losses), losses
    return losses


def test_dino_trains_20_steps_on_convnext_atto(tmp_path):
    result = run_cli(["train", *CONVNEXT_DINO, f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(tmp_path)
    _check_losses(summary)
    assert summary["backbone"] == "convnext_atto" and summary["test_fsdp_units"] == {}  # one process: no FSDP2


def test_fsdp_cpu_shards_each_convnext_block(tmp_path):
    # the second process runs the CLI's file as a script: tests/ (the report) must be on its path
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    result = run_cli(["train", "trainer=fsdp_cpu", *CONVNEXT_DINO, f"hydra.run.dir={tmp_path}"],
                     env={"PYTHONPATH": path})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(tmp_path)  # rank 0's
    _check_losses(summary)
    units = summary["test_fsdp_units"]
    for network in ("student", "teacher"):
        # every block its own unit (the adapter's shard units), then the backbone and the head
        expected = {f"{network}.backbone.model.{block}" for block in BLOCKS} | {f"{network}.backbone", f"{network}.head"}
        assert {name for name in units if name.startswith(f"{network}.")} == expected
    # each unit holds about half of its parameters on this process (2 processes)
    assert all(0.4 <= share <= 0.6 for share in units.values()), units
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    assert checkpoint.is_dir() and len(list(checkpoint.glob("*.distcp"))) == 2
