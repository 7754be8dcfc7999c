"""SyncBatchNorm on CPU + gloo: 2 processes on parts of a batch equal plain BatchNorm on
the whole batch in one process (outputs, gradients, running statistics); converter;
the CLI's trainer.sync_batchnorm=true on 2 CPU processes."""

from __future__ import annotations

import copy
import socket

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from ssl_zoo.parallel.sync_batchnorm import (
    SyncBatchNorm,
    convert_sync_batchnorm,
    revert_sync_batchnorm,
)

TIGHT = {"rtol": 1e-6, "atol": 1e-6}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bn(kind: type[nn.Module], channels: int, seed: int, **kwargs) -> nn.Module:
    """A BatchNorm with non-trivial affine parameters and running statistics."""
    torch.manual_seed(seed)
    bn = kind(channels, **kwargs)
    with torch.no_grad():
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1.0, 1.0)
        if bn.track_running_stats:
            bn.running_mean.uniform_(-1.0, 1.0)
            bn.running_var.uniform_(0.5, 2.0)
    return bn


def _case(name, bn, shape, sizes, steps=2, scale=1.0, shift=0.0, grad=True, seed=0) -> dict:
    """``steps`` training forwards (with a backward of sum(out * g) each unless ``grad`` is
    False: the EMA teacher's no-grad train-mode forward), then one eval forward. ``sizes``:
    images per rank, which see consecutive parts of the same global batch."""
    generator = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    xs = [torch.randn((n, *shape), generator=generator, dtype=torch.float64).float() * scale + shift for _ in range(steps)]
    gs = [torch.randn((n, *shape), generator=generator) for _ in range(steps)]
    return {"name": name, "bn": bn, "xs": xs, "gs": gs, "sizes": sizes, "grad": grad}


def _run(bn: nn.Module, xs, gs, grad: bool) -> dict:
    """What every case records, for the one-process reference and for each rank."""
    record = {"out": [], "x_grad": [], "w_grad": [], "b_grad": []}
    bn.train()
    for x, g in zip(xs, gs):
        if grad:
            x = x.clone().requires_grad_(True)
            out = bn(x)
            bn.zero_grad()  # per-step gradients, not their sum
            (out * g).sum().backward()
            record["x_grad"].append(x.grad)
            if bn.affine:
                record["w_grad"].append(bn.weight.grad.clone())
                record["b_grad"].append(bn.bias.grad.clone())
        else:
            with torch.no_grad():
                out = bn(x)
        record["out"].append(out.detach())
    record["state"] = {k: v.clone() for k, v in bn.state_dict().items()}
    bn.eval()
    with torch.no_grad():
        record["eval_out"] = bn(xs[-1])
    return record


def _worker(rank: int, world_size: int, port: int, cases: list[dict], out_path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        results = {}
        for case in cases:
            start = sum(case["sizes"][:rank])
            part = slice(start, start + case["sizes"][rank])
            # A copy: spawn passes tensors in shared memory, and the module's buffers are
            # updated in place (by both processes, and seen by the parent's reference).
            bn = convert_sync_batchnorm(copy.deepcopy(case["bn"]))
            assert isinstance(bn, SyncBatchNorm)
            results[case["name"]] = _run(bn, [x[part] for x in case["xs"]], [g[part] for g in case["gs"]], case["grad"])
        torch.save(results, f"{out_path}{rank}.pt")
    finally:
        dist.destroy_process_group()


CASES = [
    # 2D maps (ResNet backbones), halves of a batch, momentum 0.1
    lambda: _case("halves_2d", _bn(nn.BatchNorm2d, 3, seed=1), (3, 4, 5), [4, 4]),
    # (N, C) features (the DINO/BYOL heads), unequal parts, cumulative average
    lambda: _case("unequal_1d", _bn(nn.BatchNorm1d, 6, seed=2, momentum=None), (6,), [7, 3], steps=3),
    # one process without data this step; no affine parameters
    lambda: _case("empty_rank", _bn(nn.BatchNorm2d, 2, seed=3, affine=False), (2, 3, 3), [5, 0]),
    # the EMA teacher: train-mode BatchNorm under no_grad
    lambda: _case("teacher_no_grad", _bn(nn.BatchNorm2d, 3, seed=4), (3, 2, 2), [3, 5], grad=False),
    # |mean| >> std: the global variance keeps its digits (float64 combination)
    lambda: _case("large_mean", _bn(nn.BatchNorm1d, 4, seed=5), (4,), [6, 6], scale=0.01, shift=100.0),
    # no running statistics: batch statistics in eval mode too
    lambda: _case("no_running_stats", _bn(nn.BatchNorm1d, 3, seed=6, track_running_stats=False), (3,), [4, 2]),
]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    """Every case through 2 gloo processes at once (one spawn: process start-up dominates)."""
    import torch.multiprocessing as mp

    cases = [make() for make in CASES]
    out_path = str(tmp_path_factory.mktemp("sync_bn") / "rank")
    mp.spawn(_worker, args=(2, _free_port(), cases, out_path), nprocs=2, join=True)
    ranks = [torch.load(f"{out_path}{r}.pt", weights_only=True) for r in range(2)]
    return {case["name"]: (case, [r[case["name"]] for r in ranks]) for case in cases}


def _reference(case: dict) -> dict:
    return _run(copy.deepcopy(case["bn"]), case["xs"], case["gs"], case["grad"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["halves_2d", "unequal_1d", "empty_rank", "teacher_no_grad", "no_running_stats"])
def test_two_processes_equal_one_process_on_the_whole_batch(two_process_results, name):
    case, ranks = two_process_results[name]
    single = _reference(case)
    for step, out in enumerate(single["out"]):
        assert_close(torch.cat([r["out"][step] for r in ranks]), out, **TIGHT)
        if case["grad"]:
            assert_close(torch.cat([r["x_grad"][step] for r in ranks]), single["x_grad"][step], **TIGHT)
        if case["grad"] and case["bn"].affine:
            # each process holds the gradient of its own part; DDP sums (then averages) them
            assert_close(sum(r["w_grad"][step] for r in ranks), single["w_grad"][step], **TIGHT)
            assert_close(sum(r["b_grad"][step] for r in ranks), single["b_grad"][step], **TIGHT)
    for rank in ranks:
        assert rank["state"].keys() == single["state"].keys()
        for key, value in single["state"].items():
            assert_close(rank["state"][key], value, **TIGHT)  # running stats, num_batches_tracked
    # eval mode: running statistics (identical on both processes), each part on its own
    sizes = case["sizes"]
    assert_close(ranks[0]["eval_out"], single["eval_out"][: sizes[0]], **TIGHT)
    assert_close(ranks[1]["eval_out"], single["eval_out"][sizes[0] :], **TIGHT)


@pytest.mark.slow
def test_large_mean_keeps_the_variance_digits(two_process_results):
    """mean 100, std 0.01: E[x^2] - mean^2 over the global batch in fp32 gives garbage
    (negative variances here); ours is as accurate as fp32 nn.BatchNorm, both measured
    against nn.BatchNorm in float64 on the same inputs."""
    case, ranks = two_process_results["large_mean"]
    exact = _run(copy.deepcopy(case["bn"]).double(), [x.double() for x in case["xs"]],
                 [g.double() for g in case["gs"]], grad=True)
    plain = _reference(case)
    for key in ("out", "x_grad"):
        for step, want in enumerate(exact[key]):
            # fp32 normalisation of values near 100 leaves ~1e-4 relative error (both)
            bound = {"rtol": 0.0, "atol": 2e-3 * float(want.abs().max())}
            assert_close(torch.cat([r[key][step] for r in ranks]).double(), want, **bound)
            assert_close(plain[key][step].double(), want, **bound)
    assert_close(ranks[0]["state"]["running_var"].double(), exact["state"]["running_var"], rtol=1e-6, atol=0.0)


def test_one_process_is_plain_batchnorm_bitwise():
    for kind, shape in ((nn.BatchNorm1d, (8, 5)), (nn.BatchNorm2d, (8, 5, 3, 3))):
        plain = _bn(kind, 5, seed=7)
        sync = convert_sync_batchnorm(copy.deepcopy(plain))
        x = torch.randn(shape)
        g = torch.randn(shape)
        a, b = _run(plain, [x, x + 1], [g, g], True), _run(sync, [x, x + 1], [g, g], True)
        for key in ("out", "x_grad", "w_grad", "b_grad"):
            for u, v in zip(a[key], b[key]):
                assert torch.equal(u, v), key
        for key, value in a["state"].items():
            assert torch.equal(b["state"][key], value), key
        assert torch.equal(a["eval_out"], b["eval_out"])


def test_converter_keeps_parameters_buffers_and_modes_and_reverts():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6, momentum=None, affine=False)),
    )
    shared = nn.BatchNorm1d(6)
    model.append(shared)
    model.append(nn.Sequential(shared))  # one module under two parents stays one module
    model[1].weight.requires_grad_(False)
    model[1].eval()
    before = {name: tensor for name, tensor in model.state_dict(keep_vars=True).items()}
    params = list(model.parameters())

    converted = convert_sync_batchnorm(model)
    assert converted is model
    kinds = [type(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert kinds == [SyncBatchNorm] * 3
    assert model[3] is model[4][0]
    assert list(model.parameters()) == params  # the same Parameter objects: optimizers keep them
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before.keys()  # checkpoints load either way
    assert all(after[k] is v for k, v in before.items())
    assert not model[1].training and model[2][2].training
    assert not model[1].weight.requires_grad and model[2][2].momentum is None and not model[2][2].affine
    assert convert_sync_batchnorm(model) is model  # idempotent

    single = convert_sync_batchnorm(nn.BatchNorm1d(3))
    assert type(single) is SyncBatchNorm

    reverted = revert_sync_batchnorm(model)
    assert [type(m) for m in reverted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] == [
        nn.BatchNorm2d,
        nn.BatchNorm1d,
        nn.BatchNorm1d,
    ]
    assert all(reverted.state_dict(keep_vars=True)[k] is v for k, v in before.items())
    assert not reverted[1].training and reverted[3] is reverted[4][0]


def test_converter_refuses_batchnorm_subclasses_it_would_change():
    class BatchNormAct(nn.BatchNorm2d):
        def forward(self, x):
            return torch.relu(super().forward(x))

    with pytest.raises(TypeError, match="BatchNormAct"):
        convert_sync_batchnorm(nn.Sequential(BatchNormAct(3)))


def test_layer_sync_plugin_round_trip():
    from ssl_zoo.parallel.layer_sync import (
        SyncBatchNormLayerSync,  # Lightning: not in the spawned workers
    )

    plugin = SyncBatchNormLayerSync()
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    assert isinstance(plugin.apply(model)[1], SyncBatchNorm)
    assert type(plugin.revert(model)[1]) is nn.BatchNorm1d


def test_trainer_sync_batchnorm_true_picks_the_plugin_off_cuda(tmp_path):
    from ssl_zoo.train import sync_batchnorm_on_any_device  # here: the spawned workers skip it
    from tests.conftest import compose_config

    cfg = compose_config(["trainer=ddp_cpu", "trainer.sync_batchnorm=true", "trainer.max_steps=3"], tmp_path)
    node = sync_batchnorm_on_any_device(cfg.trainer)
    assert node.sync_batchnorm is False
    assert [p._target_.rsplit(".", 1)[-1] for p in node.plugins] == ["AtomicCheckpointIO", "SyncBatchNormLayerSync"]
    assert cfg.trainer.sync_batchnorm is True and len(cfg.trainer.plugins) == 1  # the run config is kept
    assert node.max_epochs is None  # interpolations relative to the trainer node still resolve
    gpu = compose_config(["trainer=gpu", "trainer.sync_batchnorm=true"], tmp_path)
    assert sync_batchnorm_on_any_device(gpu.trainer).sync_batchnorm is True  # torch's on CUDA
    off = compose_config(["trainer=ddp_cpu"], tmp_path)
    assert sync_batchnorm_on_any_device(off.trainer) is off.trainer


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["ddp_cpu", "fsdp_cpu"])
def test_cli_two_cpu_processes_with_sync_batchnorm(tmp_path, trainer):
    """DINO on resnet10t (BatchNorm in backbone and head, student and teacher) on 2 gloo
    processes with trainer.sync_batchnorm=true, under DDP and under FSDP2 (which applies
    the plugin itself, ssl_zoo/parallel/fsdp.py). A DDP checkpoint holds plain BatchNorm keys.
    257 bank images in batches of 128: unpadded shares would give the kNN BatchNorm
    recalibration 2 batches on one process and 1 on the other, and the first would wait
    forever in its second all-reduce (it did, before knn_dataloaders padded the shares)."""
    from tests.conftest import TINY_HEAD, read_summary, run_cli

    run_dir = tmp_path / "run"
    result = run_cli([
        "train", f"trainer={trainer}", "trainer.sync_batchnorm=true", "trainer.max_steps=2",
        "data.train_set.num_images=257", "data.knn_val_set.num_images=128", "data.batch_size=32",
        "+data.knn_batch_size=128",
        "data.num_workers=0", "augmentation.transform.n_local=2", *TINY_HEAD, "logger=csv",
        "callbacks.knn.raw_pixel_baseline=false", f"hydra.run.dir={run_dir}",
    ])
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_summary(run_dir)["steps"] == 2
    output = result.stdout + result.stderr
    assert "32 BatchNorm layers normalise with the statistics of all 2 processes" in output
    assert "(128 queries, 257 in the bank" in output
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if checkpoint.is_file():  # FSDP2 writes a directory of shards (torch.distributed.checkpoint)
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        assert any(key.endswith("running_var") for key in state)
