"""Teacher targets: parity with the reference, invariants, validation, DDP semantics."""

from __future__ import annotations

import socket

import pytest
import torch
from torch.testing import assert_close

from ssl_zoo.losses import (
    SinkhornKnoppTargets,
    SoftmaxCentering,
    build_teacher_targets,
    sinkhorn_knopp,
    softmax_center,
)
from tests.parity import load_fixture


def test_softmax_centering_parity():
    fx = load_fixture("softmax_centering")
    steps = fx["steps"]
    centering = SoftmaxCentering(steps[0]["teacher_output"].shape[-1], fx["center_momentum"])
    for i, step in enumerate(steps):
        probs = centering.targets(step["teacher_output"], step["teacher_temp"])
        assert_close(
            probs, step["probs"], rtol=1e-5, atol=1e-7, msg=lambda m, i=i: f"step {i}: {m}"
        )
        centering.update(step["teacher_output"])
        assert_close(
            centering.center,
            step["center_after"],
            rtol=1e-5,
            atol=1e-7,
            msg=lambda m, i=i: f"step {i} center: {m}",
        )


def test_sinkhorn_knopp_parity():
    for i, case in enumerate(load_fixture("sinkhorn_knopp")["cases"]):
        expected = case["targets"]
        out = sinkhorn_knopp(case["teacher_output"], case["teacher_temp"], case["n_iterations"])
        # K=4096 accumulates more rounding in the sums: the README allows 1e-4 there.
        rtol = 1e-4 if expected.shape[-1] >= 1024 else 1e-5
        assert_close(out, expected, rtol=rtol, atol=1e-8, msg=lambda m, i=i: f"case {i}: {m}")
        assert_close(out.sum(-1), torch.ones(out.shape[0]), rtol=0, atol=1e-5)


def test_sinkhorn_strategy_matches_function():
    t = torch.randn(12, 10) * 0.5
    strategy = build_teacher_targets("sinkhorn_knopp", 10, n_iterations=5)
    assert isinstance(strategy, SinkhornKnoppTargets)
    assert_close(strategy.targets(t, 0.05), sinkhorn_knopp(t, 0.05, 5))
    strategy.update(t)  # no state, no error


def test_sinkhorn_balances_prototypes():
    torch.manual_seed(0)
    batch, k = 64, 8
    t = torch.randn(batch, k) * 0.5
    q = sinkhorn_knopp(t, temperature=0.1, n_iterations=100)
    assert_close(q.sum(-1), torch.ones(batch), rtol=0, atol=1e-5)
    assert_close(q.sum(0), torch.full((k,), batch / k), rtol=1e-3, atol=0)
    # Three rounds already balance far better than a plain softmax.
    q3 = sinkhorn_knopp(t, temperature=0.1, n_iterations=3)
    plain = torch.softmax(t / 0.1, dim=-1)
    assert (q3.sum(0) - batch / k).abs().max() < (plain.sum(0) - batch / k).abs().max()


def test_sinkhorn_permutation_equivariant_and_leading_dims():
    torch.manual_seed(1)
    t = torch.randn(3, 5, 16) * 0.5
    flat = sinkhorn_knopp(t.reshape(15, 16), 0.07)
    assert_close(sinkhorn_knopp(t, 0.07), flat.reshape(3, 5, 16))
    perm = torch.randperm(15)
    assert_close(sinkhorn_knopp(t.reshape(15, 16)[perm], 0.07), flat[perm], rtol=1e-5, atol=1e-7)


def test_centering_moves_toward_batch_mean():
    torch.manual_seed(2)
    centering = SoftmaxCentering(6, momentum=0.9)
    centering.center.fill_(1.0)
    t = torch.randn(10, 6)
    mean = t.mean(0, keepdim=True)
    before = (centering.center - mean).norm()
    centering.update(t)
    assert (centering.center - mean).norm() < before
    assert_close(centering.center, 0.9 * torch.ones(1, 6) + 0.1 * mean)

    exact = SoftmaxCentering(6, momentum=0.0)
    exact.update(t)
    assert_close(exact.center, mean)
    frozen = SoftmaxCentering(6, momentum=1.0)
    frozen.update(t)
    assert_close(frozen.center, torch.zeros(1, 6))
    # An overflowing teacher (one Inf logit) must not poison the center for the rest of the run.
    kept = exact.center.clone()
    exact.update(torch.cat((t, torch.full((1, 6), float("inf")))))
    assert torch.equal(exact.center, kept)


def test_centering_patch_logits_mean_over_all_leading_dims():
    t = torch.randn(3, 5, 4)
    centering = SoftmaxCentering(4, momentum=0.0)
    centering.update(t)
    assert_close(centering.center, t.mean(dim=1).mean(dim=0, keepdim=True))
    # Targets keep the leading dims and use the center before any update.
    fresh = SoftmaxCentering(4)
    assert_close(fresh.targets(t, 0.1), torch.softmax(t / 0.1, dim=-1))


def test_targets_use_center_before_update():
    t = torch.randn(8, 5)
    centering = SoftmaxCentering(5)
    centering.center.copy_(torch.randn(1, 5))
    expected = softmax_center(t, centering.center.clone(), 0.04)
    probs = centering.targets(t, 0.04)
    centering.update(t)
    assert_close(probs, expected)


def test_build_teacher_targets():
    centering = build_teacher_targets("centering", 7, center_momentum=0.8)
    assert isinstance(centering, SoftmaxCentering)
    assert centering.momentum == 0.8 and centering.center.shape == (1, 7)
    assert "center" in centering.state_dict()  # saved with checkpoints
    with pytest.raises(ValueError, match="centering.*sinkhorn_knopp"):
        build_teacher_targets("swav", 7)


def test_targets_fp32_under_bf16_autocast():
    t = (torch.randn(8, 16) * 0.5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sk = sinkhorn_knopp(t, 0.05)
        sc = softmax_center(t, torch.zeros(1, 16), 0.05)
        centering = SoftmaxCentering(16)
        centering.update(t)
    assert sk.dtype == sc.dtype == centering.center.dtype == torch.float32
    assert_close(sk, sinkhorn_knopp(t.float(), 0.05))
    assert_close(sc, torch.softmax(t.float() / 0.05, dim=-1))
    assert_close(centering.center, 0.1 * t.float().mean(0, keepdim=True))


def test_targets_validation():
    t = torch.randn(4, 3)
    for bad in (0.0, -0.1):
        with pytest.raises(ValueError, match="temperature"):
            softmax_center(t, torch.zeros(1, 3), bad)
        with pytest.raises(ValueError, match="temperature"):
            sinkhorn_knopp(t, bad)
    with pytest.raises(ValueError, match="n_iterations"):
        sinkhorn_knopp(t, 0.1, n_iterations=0)
    with pytest.raises(ValueError, match="n_iterations"):
        SinkhornKnoppTargets(n_iterations=0)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="momentum"):
            SoftmaxCentering(3, momentum=bad)
    with pytest.raises(ValueError, match="out_dim"):
        SoftmaxCentering(0)
    with pytest.raises(ValueError, match="prototypes"):
        SoftmaxCentering(5).update(t)
    with pytest.raises(ValueError, match="prototypes"):
        softmax_center(t, torch.zeros(1, 5), 0.1)


# --- DDP: 2 gloo processes, each with half of the batch, match 1 process on the whole batch.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, logits: torch.Tensor, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        local = logits.chunk(world_size)[rank]
        sk = sinkhorn_knopp(local, 0.05)
        centering = SoftmaxCentering(logits.shape[-1], momentum=0.5)
        centering.update(local)
        # Uneven rows (masked patches): rank 0 holds 3, rank 1 holds 9.
        uneven = logits[:3] if rank == 0 else logits[3:]
        centers = {}
        for reduction in ("global_mean", "mean_of_process_means"):
            patch_center = SoftmaxCentering(logits.shape[-1], momentum=0.5, reduction=reduction)
            patch_center.update(uneven)
            patch_center.update(logits[:0] if rank == 0 else logits[5:])  # rank 0 without masked patches
            centers[reduction] = patch_center.center
        torch.save({"sk": sk, "center": centering.center, **centers}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_targets_ddp_match_single_process(tmp_path):
    import torch.multiprocessing as mp

    torch.manual_seed(3)
    logits = torch.randn(12, 10) * 0.5
    mp.spawn(_ddp_worker, args=(2, _free_port(), logits, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert_close(torch.cat([r["sk"] for r in results]), sinkhorn_knopp(logits, 0.05))
    single = SoftmaxCentering(10, momentum=0.5)
    single.update(logits)
    for r in results:
        assert_close(r["center"], single.center)
    # The iBOT patch center (dinov2 ibot_patch_loss.py): each process's mean, then the mean
    # over processes; a process without rows adds nothing. global_mean: over all rows.
    first = 0.5 * (0.5 * logits[:3].mean(0) + 0.5 * logits[3:].mean(0))
    expected = {
        "mean_of_process_means": 0.5 * first + 0.5 * logits[5:].mean(0),
        "global_mean": 0.5 * (0.5 * logits.mean(0)) + 0.5 * logits[5:].mean(0),
    }
    for reduction, center in expected.items():
        for r in results:
            assert_close(r[reduction], center.unsqueeze(0))
    assert not torch.allclose(expected["global_mean"], expected["mean_of_process_means"])
