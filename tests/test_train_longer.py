"""The end of a run is a checkpoint like any other: "train longer" from it (ckpt_path,
a larger trainer.max_steps) continues the same epoch at the next sample and ends bitwise
equal to a run that was that long from the start.

The schedules are functions of the run's length (a cosine over trainer.max_steps), so a
longer run has other learning rates from step 0; here they are made constant (no warm-up,
min_lr = base_lr, weight_decay_end = weight_decay, teacher momentum 1) so that the two runs
can be compared bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_zoo.config import compose_config
from ssl_zoo.train import train
from tests.conftest import TINY_DATA

# 128 images at batch 32: 4 steps per epoch. The first run stops at step 3, mid-epoch.
BASE = [
    *TINY_DATA, "data.train_set.num_images=128", "~logger", "callbacks.progress=null", "callbacks.knn=null",
    "callbacks.curve=null", "callbacks.viz=null", "callbacks.health=null", "callbacks.throughput=null",
    "method.momentum_teacher=1.0", "optim.schedule.warmup_epochs=0", "optim.schedule.lr_scaling=none",
    "optim.schedule.min_lr=${optim.schedule.base_lr}", "optim.schedule.weight_decay_end=${optim.schedule.weight_decay}",
]  # fmt: skip
SHORT, LONG = 3, 6


def _run(run_dir: Path, steps: int, *extra: str) -> dict:
    run_dir.mkdir()
    summary = train(compose_config([*BASE, f"trainer.max_steps={steps}", *extra], run_dir), run_dir)
    assert summary["steps"] == steps
    return torch.load(summary["checkpoint"], weights_only=True)


def test_train_longer_from_a_mid_epoch_end_continues_the_epoch_bitwise(tmp_path):
    straight = _run(tmp_path / "straight", LONG, "callbacks.checkpoint.every_n_train_steps=1000")
    # Periodic saves every 2 steps: the end (step 3) is not one of them, last.ckpt must still be step 3.
    short = _run(tmp_path / "short", SHORT, "callbacks.checkpoint.every_n_train_steps=2")
    assert short["global_step"] == SHORT and short["epoch"] == 0
    assert short["ssl_zoo_resume"]["data"]["epoch"] == 0 and short["ssl_zoo_resume"]["data"]["samples"] == SHORT * 32
    last = tmp_path / "short" / "checkpoints" / "last.ckpt"
    longer = _run(tmp_path / "longer", LONG, f"ckpt_path={last}", "callbacks.checkpoint.every_n_train_steps=1000")
    assert longer["global_step"] == straight["global_step"] == LONG
    assert longer["epoch"] == straight["epoch"]
    different = [k for k, v in straight["state_dict"].items() if not torch.equal(v, longer["state_dict"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    for a, b in zip(straight["optimizer_states"][0]["state"].values(), longer["optimizer_states"][0]["state"].values(),
                    strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
