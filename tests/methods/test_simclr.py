"""SimCLR: NT-Xent against a hand computation, 2 processes against 1, and the method
through the real config and CLI."""

from __future__ import annotations

import csv
import math
import socket

import pytest
import torch
from torch.testing import assert_close

from ssl_zoo.losses.simclr import gather_with_grad, nt_xent_loss
from ssl_zoo.optim.run_plan import RunPlan
from ssl_zoo.train import ConfigError, build_all
from tests.conftest import TINY_DATA, read_summary, run_cli

QUIET = ["callbacks.knn=null", "callbacks.progress=null", "callbacks.checkpoint=null", "~logger"]
SMALL = ["method=simclr", "method.projector_hidden_dim=64", "method.projector_out_dim=32"]

# --- the loss -------------------------------------------------------------------------------


def _nt_xent_by_hand(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """Eq. 1 of the paper, one anchor and one candidate at a time, in Python floats."""
    z = [list(map(float, row)) for row in torch.cat([z1, z2])]
    n = len(z) // 2

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(cos(z[i], z[k]) / temperature) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(cos(z[i], z[positive]) / temperature) / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_equals_the_sum_over_pairs(temperature):
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator)
    expected = _nt_xent_by_hand(z1, z2, temperature)
    assert nt_xent_loss(z1, z2, temperature).item() == pytest.approx(expected, rel=1e-5)
    # scale-free (cosines) and symmetric in the two views
    assert nt_xent_loss(3.0 * z1, 0.5 * z2, temperature).item() == pytest.approx(expected, rel=1e-5)
    assert nt_xent_loss(z2, z1, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_nt_xent_closed_form_on_orthogonal_embeddings():
    eye = torch.eye(4)
    # Both views of each image identical, the two images orthogonal: every anchor sees its
    # positive at cos 1 and its 2 negatives at cos 0, so l = -log(e^(1/T) / (e^(1/T) + 2)).
    for temperature in (1.0, 0.5):
        expected = math.log(1 + 2 * math.exp(-1 / temperature))
        assert nt_xent_loss(eye[:2], eye[:2], temperature).item() == pytest.approx(expected, rel=1e-6)
    # Everything orthogonal: the positive is no better than the 3 others, l = ln 3.
    assert nt_xent_loss(eye[:2], eye[2:], 0.1).item() == pytest.approx(math.log(3), rel=1e-6)
    # The positive opposite (cos -1), the negatives orthogonal, T = 1: l = ln(1 + 2e).
    assert nt_xent_loss(eye[:2], -eye[:2], 1.0).item() == pytest.approx(math.log(1 + 2 * math.e), rel=1e-6)


def test_nt_xent_is_fp32_under_bf16_autocast():
    z1, z2 = torch.randn(4, 8).bfloat16(), torch.randn(4, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent_loss(z1, z2, 0.1)
    assert loss.dtype == torch.float32
    assert_close(loss, nt_xent_loss(z1.float(), z2.float(), 0.1))


def test_nt_xent_bad_input():
    with pytest.raises(ValueError, match=r"z1 and z2 must both be \(B, D\)"):
        nt_xent_loss(torch.randn(4, 8), torch.randn(4, 7))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        nt_xent_loss(torch.randn(4, 8), torch.randn(4, 8), 0.0)


def test_gather_is_the_identity_without_a_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x


# --- 2 processes, each with half of the batch, against 1 process on the whole batch ----------

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss_and_grads(x1, x2, linear, temperature, ddp: bool) -> dict[str, torch.Tensor]:
    """NT-Xent of a linear projection of (x1, x2): loss, input and weight gradients."""
    x1, x2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    model = linear
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(linear)  # averages the weight gradient over processes
    loss = nt_xent_loss(model(x1), model(x2), temperature)
    loss.backward()
    return {"loss": loss.detach(), "x1_grad": x1.grad, "x2_grad": x2.grad, "weight_grad": linear.weight.grad.clone()}


def _worker(rank: int, port: int, x1, x2, linear, temperature: float, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        part = slice(rank * len(x1) // WORLD, (rank + 1) * len(x1) // WORLD)
        torch.save(_loss_and_grads(x1[part], x2[part], linear, temperature, ddp=True), f"{out}{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    """Loss, per-sample gradients and the DDP-averaged weight gradient of NT-Xent with the
    negatives gathered across 2 gloo processes equal those of one process on the whole
    batch. Without gradients through the gather, each process would only get its own
    anchors' share of its rows' gradients and the gradients would differ."""
    import torch.multiprocessing as mp

    generator = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    torch.manual_seed(2)
    linear = torch.nn.Linear(5, 4)
    temperature = 0.2
    single = _loss_and_grads(x1, x2, linear, temperature, ddp=False)
    linear.weight.grad = linear.bias.grad = None
    out = str(tmp_path / "rank")
    mp.spawn(_worker, args=(_free_port(), x1, x2, linear, temperature, out), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{out}{r}.pt", weights_only=True) for r in range(WORLD)]
    # each process's loss is the mean over its anchors: their mean is the whole batch's
    assert_close(torch.stack([r["loss"] for r in ranks]).mean(), single["loss"])
    # the gather's backward sums every process's gradient into each row: DDP's average
    # divides by the number of processes
    for key in ("x1_grad", "x2_grad"):
        assert_close(torch.cat([r[key] for r in ranks]) / WORLD, single[key])
    for r in ranks:
        assert_close(r["weight_grad"], single["weight_grad"])
    assert single["x1_grad"].abs().min() > 0  # every row's gradient is there to compare


# --- the method -------------------------------------------------------------------------------


def _method_and_batch(compose_cfg, overrides=()):
    parts = build_all(compose_cfg([*TINY_DATA, *QUIET, *SMALL, *overrides]))
    parts["datamodule"].setup("fit")
    method = parts["method"]
    method.plan_run(RunPlan(total_steps=10, steps_per_data_epoch=5, global_batch_size=32))
    return method, next(iter(parts["datamodule"].train_dataloader()))


def test_one_step_through_the_real_config(compose_cfg):
    method, batch = _method_and_batch(compose_cfg)
    assert method.teacher is None and method.temperature == 0.5
    loss, logs = method.compute_loss(batch, step=0)
    assert torch.isfinite(loss) and logs["simclr_loss"] == loss.detach()
    assert method.step_signals["student_features"].shape[0] == batch["global_crops"].shape[0]
    # the loss is the NT-Xent of the two views' projections
    views = batch["global_crops"]
    z1, z2 = method.student["projector"](method.student["backbone"](views)["cls"]).chunk(2)
    assert loss.item() == pytest.approx(_nt_xent_by_hand(z1.detach(), z2.detach(), 0.5), rel=1e-5)
    loss.backward()
    assert method.student["backbone"].model.conv1[0].weight.grad.abs().sum() > 0


def test_local_crops_are_refused_with_the_fix(compose_cfg):
    with pytest.raises(ConfigError, match="SimCLR uses exactly two views: set augmentation.transform.n_global=2"):
        build_all(compose_cfg([*TINY_DATA, *QUIET, *SMALL, "augmentation.transform.n_local=2"]))


@pytest.mark.parametrize("key, value, expected", [("temperature", 0, "> 0"), ("projector_out_dim", 0, ">= 1")])
def test_bad_values_name_the_key(compose_cfg, key, value, expected):
    with pytest.raises(ConfigError, match=rf"method.{key} must be {expected}, got {value}"):
        build_all(compose_cfg([*TINY_DATA, *QUIET, *SMALL, f"method.{key}={value}"]))


@pytest.mark.slow
def test_cli_run_trains_and_writes_a_summary(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["train", *TINY_DATA, *SMALL, "trainer.max_steps=4", "trainer.log_every_n_steps=1",
                      "callbacks.knn.every_n_steps=0", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["method"] == "SimCLR" and summary["steps"] == 4
    assert 0.0 <= summary["knn_top1_end"] <= 1.0
    rows = list(csv.DictReader(next(run_dir.glob("csv/**/metrics.csv")).open()))
    losses = [float(row["train/simclr_loss"]) for row in rows if row.get("train/simclr_loss")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    # at most ln(2B - 1) = ln 63 (a positive no better than a negative) plus slack
    assert all(0 < v < math.log(63) + 0.5 for v in losses)
