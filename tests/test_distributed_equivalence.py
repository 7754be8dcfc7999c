"""2 gloo processes on a global batch == 1 process on the same global batch.

For each method, under DDP and under FSDP2 (``ssl_zoo.parallel.fsdp``), 3 optimizer steps of
Lightning's loop (tests/equivalence_worker.py) give the same loss at every step and the
same parameters and buffers at the end (rtol 1e-5) as one process. What this covers:
gradients averaged (DDP) or reduce-scattered (FSDP2) over processes, the teacher's EMA on
local shards, softmax centers and Sinkhorn-Knopp sums that are global (their all-reduces),
BatchNorm under synchronised BatchNorm, gradient clipping on sharded gradients. KoLeo is
per process, as in the DINOv2 reference, so its term is checked against that definition
instead of against one process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_zoo.optim.run_plan import RunPlan
from tests.conftest import REPO_ROOT

# One xdist worker runs the module: the three launches (1 process, DDP, FSDP2) are shared.
pytestmark = pytest.mark.xdist_group("distributed_equivalence")

WORKER = REPO_ROOT / "tests" / "equivalence_worker.py"
TINY = ["backbone.depth=2", "+backbone.embed_dim=64", "+backbone.num_heads=2", "data.image_size=32",
        "data.local_image_size=16", "method.out_dim=256", "method.hidden_dim=128", "method.bottleneck_dim=64"]
CNN = ["data.image_size=32", "data.local_image_size=16"]
# BatchNorm runs (--sync-batchnorm) train with SGD: a bias right before a BatchNorm has a
# zero gradient in exact arithmetic (the normalisation removes it), and AdamW's
# normalisation turns its round-off gradient into full-size steps of either sign; SGD
# keeps round-off at round-off.
METHODS = {
    # DINOv2's KoLeo is per process: 0 here, its own test below. Its iBOT center is a mean
    # of per-process means (the reference's rule), which depends on how the masked patches
    # fall on the processes: here the one mean over all patches.
    "dinov2": (["method=dinov2", "backbone=vit_tiny", *TINY, "method.koleo_weight=0",
                "method.patch_center_reduction=global_mean"], False),
    "dino": (["method=dino", "backbone=vit_tiny", *TINY, "method.head_use_bn=false"], False),
    # Sinkhorn-Knopp's row and column sums run over the global batch
    "dino_sinkhorn": (["method=dino", "backbone=vit_tiny", *TINY, "method.head_use_bn=false",
                       "method.teacher_targets=sinkhorn_knopp"], False),
    # resnet10t and the BatchNorm head (the default DINO), BatchNorm synchronised
    "dino_batchnorm": (["method=dino", *CNN, "method.out_dim=256", "method.hidden_dim=128", "method.bottleneck_dim=64",
                        "optim/optimizer=sgd", "optim.schedule.base_lr=0.1"], True),
    # BYOL's projector and predictor have BatchNorm too
    "byol": (["method=byol", *CNN, "method.projector_hidden_dim=128", "method.predictor_hidden_dim=128",
              "optim/optimizer=sgd", "optim.schedule.base_lr=0.1"], True),
    # SimCLR's negatives are the global batch, gathered with their gradients. At 8 images the
    # loss sits near chance (ln 15), where its gradient is a small difference of large terms:
    # fp32 round-off in the gradient is ~1e-4 of it (float64: both runs agree to 1e-15), so
    # a smaller lr keeps the parameters' round-off within the tolerance.
    "simclr": (["method=simclr", *CNN, "method.projector_hidden_dim=128", "optim/optimizer=sgd",
                "optim.schedule.base_lr=0.01"], True),
}
STRATEGIES = ("ddp", "fsdp")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(strategy: str, cases: dict[str, tuple[list[str], bool]], out: Path) -> dict:
    """Every case (name -> (overrides, sync_batchnorm)) under ``strategy``, in one launch."""
    spec = out.with_suffix(".json")
    spec.write_text(json.dumps({name: {"overrides": o, "sync_batchnorm": sync} for name, (o, sync) in cases.items()}))
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if strategy == "single":
        command = [sys.executable, str(WORKER)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                   "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(WORKER)]
    result = subprocess.run([*command, "--strategy", strategy, "--cases", str(spec), "--out", str(out)],
                            capture_output=True, text=True, timeout=1200, cwd=out.parent, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """strategy -> case -> result: three launches for every method of the module."""
    directory = tmp_path_factory.mktemp("equivalence")
    return {strategy: run_worker(strategy, METHODS, directory / f"{strategy}.pt") for strategy in ("single", *STRATEGIES)}


def key_bias_slice(name: str, tensor: torch.Tensor) -> torch.Tensor | None:
    """The key part of a fused qkv bias. Attention's softmax is invariant to adding a
    constant to every logit, so the key bias has a zero gradient in exact arithmetic; its
    computed gradient is round-off, which AdamW's normalisation turns into full-size
    steps of either sign. Those entries are not comparable between runs."""
    if name.endswith("attn.qkv.bias"):
        width = tensor.numel() // 3
        return torch.cat((tensor[:width], tensor[2 * width:]))
    return None


def assert_same_run(expected: dict, actual: dict, label: str) -> None:
    torch.testing.assert_close(torch.tensor(actual["losses"]), torch.tensor(expected["losses"]), rtol=1e-5, atol=0,
                               msg=lambda m: f"{label}: losses differ: {m}")
    assert expected["state"].keys() == actual["state"].keys()
    compared = 0
    for name, want in expected["state"].items():
        got = actual["state"][name]
        if key_bias_slice(name, want) is not None:
            want, got = key_bias_slice(name, want), key_bias_slice(name, got)
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-5, atol=1e-7,
                                   msg=lambda m, name=name: f"{label}: {name} differs: {m}")
        compared += 1
    assert compared == len(expected["state"])


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_equal_one(method, strategy, runs):
    expected, actual = runs["single"][method], runs[strategy][method]
    assert len(expected["losses"]) == 3
    assert_same_run(expected, actual, f"{method} under {strategy}")


def test_koleo_is_per_process_as_in_the_reference(tmp_path):
    """DINOv2's KoLeo under 2 processes is the mean of KoLeo over each process's half of
    the batch (each GPU's nearest neighbours in the reference), not KoLeo of the whole."""
    from lightning import seed_everything

    from ssl_zoo.config import compose_config
    from ssl_zoo.train import build_backbone, build_method
    from tests.equivalence_worker import GLOBAL_BATCH, global_batches, rank_slice

    overrides = [o for o in METHODS["dinov2"][0] if not o.startswith("method.koleo_weight")] + ["method.koleo_weight=0.1"]
    actual = run_worker("ddp", {"dinov2": (overrides, False)}, tmp_path / "ddp.pt")["dinov2"]

    def koleo_of(batch: dict) -> float:
        cfg = compose_config(overrides, tmp_path / "compose")
        seed_everything(cfg.seed)
        backbone = build_backbone(cfg)
        method = build_method(cfg, backbone)
        method.plan_run(RunPlan(total_steps=3, steps_per_data_epoch=3, global_batch_size=GLOBAL_BATCH))
        _, logs = method.compute_loss(batch, step=0)
        return float(logs["koleo_loss"])

    cfg = compose_config(overrides, tmp_path / "compose")
    seed_everything(cfg.seed)
    backbone = build_backbone(cfg)
    first = global_batches(cfg, backbone, build_method(cfg, backbone))[0]
    per_process = [koleo_of(rank_slice(first, rank, 2)) for rank in range(2)]
    whole = koleo_of(first)
    assert actual["koleo"][0] == pytest.approx(sum(per_process) / 2, rel=1e-5)
    assert abs(whole - sum(per_process) / 2) > 1e-3  # the two definitions really differ here
