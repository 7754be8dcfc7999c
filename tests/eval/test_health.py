"""The collapse signals on constructed tensors whose values are known."""

import math

import pytest
import torch

from ssl_zoo.eval.health import embedding_std, kl_to_uniform, mean_entropy, prototype_usage, rankme


def test_collapsed_features_have_zero_std_and_rank_one():
    one_direction = torch.randn(1, 32).repeat(64, 1) * torch.rand(64, 1)  # same direction, any scale
    assert embedding_std(one_direction).item() == pytest.approx(0.0, abs=1e-6)
    assert rankme(one_direction).item() == pytest.approx(1.0, abs=1e-4)
    assert rankme(torch.zeros(8, 4)).item() == pytest.approx(1.0, abs=1e-4)  # not NaN


def test_spread_features_reach_the_healthy_values():
    # D orthonormal directions and their opposites: each dimension is +-1 twice, 0 elsewhere
    d = 16
    features = torch.cat((torch.eye(d), -torch.eye(d)))
    assert embedding_std(features).item() == pytest.approx(1 / math.sqrt(d), rel=1e-5)
    assert rankme(torch.eye(d) * 3).item() == pytest.approx(d, rel=1e-4)  # equal singular values
    assert rankme(torch.randn(256, 8)).item() > 7


def test_one_hot_to_one_prototype_is_sharp_collapse():
    k = 64
    probs = torch.zeros(32, k)
    probs[:, 5] = 1.0
    assert prototype_usage(probs).item() == pytest.approx(1 / k)
    assert kl_to_uniform(probs).item() == pytest.approx(math.log(k), rel=1e-6)
    assert mean_entropy(probs).item() == pytest.approx(0.0, abs=1e-7)


def test_uniform_teacher_is_uniform_collapse():
    k = 64
    probs = torch.full((32, k), 1 / k)
    assert mean_entropy(probs).item() == pytest.approx(math.log(k), rel=1e-6)
    assert kl_to_uniform(probs).item() == pytest.approx(0.0, abs=1e-6)


def test_sharp_and_diverse_targets_use_many_prototypes():
    k = 64
    probs = torch.eye(k)[torch.arange(32) * 2]  # 32 distinct one-hot rows
    assert prototype_usage(probs).item() == pytest.approx(32 / k)
    assert kl_to_uniform(probs).item() == pytest.approx(math.log(k) - math.log(32), rel=1e-5)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="features must be"):
        rankme(torch.zeros(4))
    with pytest.raises(ValueError, match="probs must be"):
        prototype_usage(torch.zeros(0, 4))
