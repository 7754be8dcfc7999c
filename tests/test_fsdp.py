"""trainer=fsdp_cpu through the CLI: each method trains sharded on 2 gloo processes, its
checkpoint (a torch.distributed.checkpoint directory) resumes in one process, and it
exports to the single-file backbone that plain timm loads."""

from __future__ import annotations

import json

import pytest
import torch

from ssl_zoo.weights.load import load_checkpoint
from tests.conftest import TINY_DATA, TINY_HEAD, TINY_VIT, read_summary, run_cli

NO_EXTRAS = ["callbacks.knn.every_n_steps=0"]
BF16 = ["trainer.strategy.param_dtype=bfloat16"]  # FSDP2's MixedPrecisionPolicy; BatchNorm stays fp32
METHODS = {
    "dino": [*TINY_VIT, *TINY_HEAD, *BF16, "callbacks.viz=null"],  # the head's BatchNorm under bf16
    "dinov2": ["method=dinov2", *TINY_VIT, *TINY_HEAD],  # attention pictures from the sharded ViT
    # a CNN: ResNet stages are the units; BatchNorm per process (no sync here); PCA pictures
    "byol": ["method=byol", "method.projector_hidden_dim=128", "method.predictor_hidden_dim=128", *BF16],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_fsdp_cpu_trains_and_dinov2_resumes_in_one_process_and_exports(method, tmp_path):
    run_dir = tmp_path / "fsdp"
    args = [*TINY_DATA, *METHODS[method], *NO_EXTRAS]
    result = run_cli(["train", "trainer=fsdp_cpu", "trainer.max_steps=2", *args, f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["steps"] == 2 and summary["knn_top1_end"] is not None
    if "callbacks.viz=null" not in args:
        assert (run_dir / "viz" / "step_000002.png").is_file()
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_dir() and (checkpoint / ".metadata").is_file()
    assert len(list(checkpoint.glob("*.distcp"))) == 2  # one shard file per process
    consolidated = load_checkpoint(checkpoint)
    assert consolidated["global_step"] == 2
    if method != "dinov2":
        return  # the rest is the same code for every method: once is enough for CI's time

    # the sharded checkpoint continues in one process (another world size)
    resumed_dir = tmp_path / "resumed"
    result = run_cli(["train", "trainer.max_steps=3", *args, f"ckpt_path={checkpoint}", f"hydra.run.dir={resumed_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_summary(resumed_dir)["steps"] == 3
    # and that one process's file checkpoint continues sharded again
    file_checkpoint = resumed_dir / "checkpoints" / "last.ckpt"
    assert file_checkpoint.is_file()
    again = tmp_path / "sharded_again"
    result = run_cli(["train", "trainer=fsdp_cpu", "trainer.max_steps=4", *args, f"ckpt_path={file_checkpoint}",
                      f"hydra.run.dir={again}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_summary(again)["steps"] == 4

    # and exports to one safetensors file with the consolidated teacher's weights
    out = tmp_path / "backbone.safetensors"
    result = run_cli(["export", f"ckpt={checkpoint}", f"out={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    from safetensors.torch import load_file

    exported = load_file(out)
    teacher = {k[len("teacher.backbone.model."):]: v for k, v in consolidated["state_dict"].items()
               if k.startswith("teacher.backbone.model.")}
    assert exported.keys() == teacher.keys()
    for name, tensor in teacher.items():
        assert torch.equal(exported[name], tensor), name
    assert json.loads(out.with_suffix(".json").read_text())["model_name"]


def test_a_files_optimizer_state_is_named_by_the_groups_order_not_the_modules():
    """A file checkpoint numbers AdamW's states in param_groups order; our groups put
    no-weight-decay tensors apart, an order that differs from named_parameters(). Each
    name must get its own parameter's moments (a wrong map would only show as training
    that quietly goes worse after a resume under FSDP2)."""
    from torch import nn

    from ssl_zoo.parallel.fsdp import named_optimizer_state

    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim == 1]
    optimizer = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0}, {"params": decay}], lr=0.1)
    model(torch.randn(5, 3)).square().sum().backward()
    optimizer.step()
    named = named_optimizer_state(optimizer.state_dict(), optimizer, model)
    parameters = dict(model.named_parameters())
    assert set(named["state"]) == set(parameters)
    for name, state in named["state"].items():
        assert torch.equal(state["exp_avg"], optimizer.state[parameters[name]]["exp_avg"]), name
    assert named["param_groups"][0]["params"] == [n for n, p in parameters.items() if p.ndim == 1]


def test_a_sharded_save_refuses_non_finite_weights_on_every_process(tmp_path):
    """NaN in one shard of process 1 only: both processes refuse the save together (no
    process enters the collective save alone), and the run ends with the refusal's line."""
    import os

    from tests.conftest import REPO_ROOT

    run_dir = tmp_path / "nan"
    poison = "+callbacks.poison={_target_: tests.faults.PoisonAfterStep, step: 1, rank: 1}"
    args = [*TINY_DATA, *TINY_VIT, *TINY_HEAD, "callbacks.knn=null", "callbacks.viz=null", "callbacks.curve=null",
            "callbacks.checkpoint.every_n_train_steps=1", poison]
    # The DDP launcher starts process 1 as a script: tests.faults must be importable there too.
    path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    result = run_cli(["train", "trainer=fsdp_cpu", "trainer.max_steps=3", *args, f"hydra.run.dir={run_dir}"],
                     env={"PYTHONPATH": path})
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "step0000001.ckpt not written: 1 model tensors hold NaN/Inf (e.g. student." in result.stderr, \
        result.stderr[-3000:]
    assert not (run_dir / "checkpoints" / "step0000001.ckpt" / ".metadata").exists()
