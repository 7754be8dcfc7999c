"""DINOv2's subset stochastic depth (backbone.drop_path_mode=subset) against the rule of
dinov2 layers/block.py:96-111, 173-194 (b8931f7): per residual branch exactly
max(int(B * (1 - rate)), 1) random samples, their residual scaled by B / subset, the
others untouched, at every rate > 0; the plain block in eval."""

from __future__ import annotations

import itertools

import pytest
import torch
from timm.models.vision_transformer import Block

from ssl_zoo.models.backbones import Backbone
from ssl_zoo.models.stochastic_depth import SubsetDropPathBlock, add_residual_on_subset, subset_size

B, N, D = 10, 5, 16


def test_subset_size_is_the_reference_rule():
    assert subset_size(10, 0.3) == int(10 * 0.7) == 7
    assert subset_size(64, 0.3) == 44 and subset_size(2, 0.9) == 1 and subset_size(1, 0.5) == 1


def test_fixed_subset_equals_the_reference_computation_and_gradients_flow_only_through_it():
    torch.manual_seed(0)
    x = torch.randn(B, N, D, requires_grad=True)
    weight = torch.randn(D, requires_grad=True)
    seen = []

    def branch(t):
        seen.append(t.shape[0])
        return torch.tanh(t) * weight

    index = torch.tensor([7, 1, 4, 0, 9, 3, 5])
    out = add_residual_on_subset(x, branch, 0.3, index=index)
    assert seen == [7]  # the branch ran on the kept samples only
    expected = x.detach().clone()
    expected[index] += B / 7 * torch.tanh(x.detach()[index]) * weight.detach()
    assert torch.allclose(out, expected, atol=1e-6)
    out.sum().backward()
    dropped = [i for i in range(B) if i not in index.tolist()]
    assert torch.equal(x.grad[dropped], torch.ones(len(dropped), N, D))  # identity path only
    assert not torch.allclose(x.grad[index], torch.ones(7, N, D))
    assert torch.allclose(weight.grad, B / 7 * torch.tanh(x.detach()[index]).sum(dim=(0, 1)), atol=1e-5)


def test_expected_value_is_the_undropped_output():
    # Exactly: averaged over every subset of 7 of 10 samples (each equally likely under randperm).
    torch.manual_seed(1)
    x = torch.randn(B, N, D)

    def branch(t):
        return torch.sin(t) * 0.5

    subsets = list(itertools.combinations(range(B), subset_size(B, 0.3)))
    mean = sum(add_residual_on_subset(x, branch, 0.3, index=torch.tensor(s)) for s in subsets) / len(subsets)
    assert torch.allclose(mean, x + branch(x), atol=1e-5)
    # And statistically, with the subsets the function draws itself.
    draws = torch.stack([add_residual_on_subset(x, branch, 0.3) for _ in range(3000)]).mean(0)
    assert (draws - (x + branch(x))).abs().max() < 0.05


def block_pair(rate: float) -> tuple[Block, SubsetDropPathBlock]:
    backbone = Backbone("vit_small_patch14_dinov2", img_size=28, depth=1, embed_dim=D, num_heads=2,
                        drop_path_rate=rate, drop_path_mode="subset", drop_path_uniform=True)
    block = backbone.model.blocks[0]
    with torch.no_grad():
        block.ls1.gamma.normal_()
        block.ls2.gamma.normal_()
    return backbone, block


def test_block_runs_each_branch_on_its_own_subset_as_the_reference():
    backbone, block = block_pair(0.3)
    assert isinstance(block, SubsetDropPathBlock)
    sizes = {"attn": [], "mlp": []}
    block.attn.register_forward_hook(lambda m, i, o: sizes["attn"].append(i[0].shape[0]))
    block.mlp.register_forward_hook(lambda m, i, o: sizes["mlp"].append(i[0].shape[0]))
    x = torch.randn(B, N, D)
    block.train()
    torch.manual_seed(5)
    out = block(x)
    assert sizes == {"attn": [7], "mlp": [7]}  # exactly int(0.7 * B) samples per branch
    # The reference (drop_add_residual_stochastic_depth twice, each its own randperm).
    torch.manual_seed(5)
    keep_attn = torch.randperm(B)[:7]
    keep_mlp = torch.randperm(B)[:7]
    assert set(keep_attn.tolist()) != set(keep_mlp.tolist())
    with torch.no_grad():
        ref = x.index_add(0, keep_attn, block.ls1(block.attn(block.norm1(x[keep_attn]))), alpha=B / 7)
        ref = ref.index_add(0, keep_mlp, block.ls2(block.mlp(block.norm2(ref[keep_mlp]))), alpha=B / 7)
    assert torch.allclose(out, ref, atol=1e-5)
    # Eval: the plain block (no scaling, every sample).
    block.eval()
    with torch.no_grad():
        plain = x + block.ls1(block.attn(block.norm1(x)))
        plain = plain + block.ls2(block.mlp(block.norm2(plain)))
        assert torch.allclose(block(x), plain, atol=1e-5)


def test_small_rates_take_subsets_too_as_dinov2_trains():
    # dinov2 trains through forward_nested (block.py:267-294): subsets at every rate > 0.
    _, block = block_pair(0.1)
    sizes = []
    block.attn.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    block.train()(torch.randn(B, N, D))
    assert sizes == [subset_size(B, 0.1)] == [int(B * 0.9)]


def test_presets_choose_the_mode(compose_cfg):
    assert compose_cfg(["experiment=dinov2_vitl16_in1k"]).backbone.drop_path_mode == "subset"
    assert compose_cfg(["experiment=dino_vits16_in1k"]).backbone.drop_path_mode == "per_sample"
    with pytest.raises(ValueError, match="drop_path_mode=subset needs timm's ViT Block.*resnet18"):
        Backbone("resnet18", drop_path_rate=0.3, drop_path_mode="subset")
    with pytest.raises(ValueError, match=r"backbone.drop_path_mode='dropout': choose one of per_sample, subset"):
        Backbone("resnet18", drop_path_mode="dropout")
