"""LARS as BYOL's reference runs it (deepmind-research byol/utils/optimizers.py, f5de0ed):
``add_weight_decay`` then ``scale_by_lars`` (trust ratio eta |w| / |g + wd w|, 1 when a
norm is 0; biases and norm weights neither decayed nor adapted), heavy-ball momentum on
the adapted update, then ``-lr``."""

from __future__ import annotations

import pytest
import timm.optim
import torch

from ssl_zoo.optim.lars import LARS
from ssl_zoo.optim.param_groups import build_param_groups
from ssl_zoo.train import build_backbone, build_method
from tests.conftest import compose_config


def reference_lars_steps(params, grads_per_step, lrs, weight_decay, eta, momentum, adapt):
    """The optax chain of the reference, transcribed on lists of tensors."""
    params = [p.clone() for p in params]
    mu = [torch.zeros_like(p) for p in params]
    for grads, lr in zip(grads_per_step, lrs):
        for i, (p, g) in enumerate(zip(params, grads)):
            u = g + weight_decay * p if adapt[i] else g
            if adapt[i]:
                p_norm, u_norm = p.norm(), u.norm()
                u = u * (eta * p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0)
            mu[i] = momentum * mu[i] + u
            params[i] = p - lr * mu[i]
    return params


def _run(optimizer_factory, params, grads_per_step, lrs):
    tensors = [torch.nn.Parameter(p.clone()) for p in params]
    groups = [{"params": [tensors[0]], "wd_multiplier": 1.0}, {"params": [tensors[1]], "wd_multiplier": 0.0}]
    optimizer = optimizer_factory(groups)
    for grads, lr in zip(grads_per_step, lrs):
        for group, wd_mult in zip(optimizer.param_groups, (1.0, 0.0)):
            group["lr"], group["weight_decay"] = lr, 0.05 * wd_mult
        for t, g in zip(tensors, grads):
            t.grad = g.clone()
        optimizer.step()
    return [t.detach() for t in tensors]


def test_lars_matches_the_byol_reference_update_and_differs_from_timm():
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(8, 5, generator=gen), torch.randn(8, generator=gen)]  # a weight, a bias
    grads = [[torch.randn(8, 5, generator=gen) * 3, torch.randn(8, generator=gen)] for _ in range(4)]
    lrs = [0.5, 1.0, 0.7, 0.2]
    expected = reference_lars_steps(params, grads, lrs, weight_decay=0.05, eta=1e-3, momentum=0.9, adapt=[True, False])
    ours = _run(lambda g: LARS(g, eta=1e-3, momentum=0.9, trust_ratio="byol"), params, grads, lrs)
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7)
    # timm's Lars (You et al.'s |g| + wd |w|) moves the adapted weight differently.
    timm_out = _run(lambda g: timm.optim.Lars(g, momentum=0.9, trust_coeff=1e-3), params, grads, lrs)
    assert not torch.allclose(timm_out[0], expected[0], rtol=1e-4, atol=0)
    paper = _run(lambda g: LARS(g, eta=1e-3, momentum=0.9, trust_ratio="lars_paper"), params, grads, lrs)
    torch.testing.assert_close(paper[0], timm_out[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours[1], expected[1])  # the bias: plain momentum SGD, no decay


def test_lars_leaves_a_zero_weight_unscaled():
    weight = torch.nn.Parameter(torch.zeros(3, 3))
    weight.grad = torch.ones(3, 3)
    LARS([{"params": [weight], "wd_multiplier": 1.0}], lr=0.1, weight_decay=0.0).step()
    torch.testing.assert_close(weight.detach(), torch.full((3, 3), -0.1))


@pytest.mark.parametrize("key,value", [("eta", 0.0), ("momentum", 1.0), ("trust_ratio", "clip")])
def test_lars_rejects_bad_settings_naming_the_key(key, value):
    with pytest.raises(ValueError, match=rf"optim\.optimizer\.{key}"):
        LARS([torch.nn.Parameter(torch.ones(2))], **{key: value})


def test_byol_preset_adapts_and_decays_exactly_the_reference_parameters(tmp_path):
    """exclude_bias_and_norm: biases and BatchNorm weights are neither decayed nor adapted;
    every other tensor (conv and linear weights) is both."""
    cfg = compose_config(["experiment=byol_r50_in1k"], tmp_path)
    with torch.device("meta"):
        method = build_method(cfg, build_backbone(cfg))
    named = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    groups = build_param_groups(named, layer_decay=1.0, num_layers=1, patch_embed_lr_mult=1.0,
                                backbone_prefix="student.backbone.")
    modules = dict(method.named_modules())
    for group in groups:
        for name in group["names"]:
            owner = modules[name.rsplit(".", 1)[0]]
            excluded = name.endswith(".bias") or isinstance(owner, torch.nn.modules.batchnorm._BatchNorm)
            assert (group["wd_multiplier"] == 0) == excluded, name
    assert sum(len(g["names"]) for g in groups) == len(named)
    output_layers = {n for n, _ in named if n.startswith(("student.projector.mlp.3.", "predictor.mlp.3."))}
    assert output_layers == {"student.projector.mlp.3.weight", "predictor.mlp.3.weight"}  # networks.py: no bias
