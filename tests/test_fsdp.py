"""trainer=fsdp_cpu through the CLI: each method trains sharded on 2 gloo processes, its
checkpoint (a torch.distributed.checkpoint directory) resumes in one process, and it
exports to the single-file backbone that plain timm loads."""

from __future__ import annotations

import json

import pytest
import torch

from ssl_zoo.checkpoints import load_checkpoint
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
