"""KoLeo: parity (incl. duplicate rows), finiteness, fp32, validation."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from ssl_zoo.losses import koleo_loss
from tests.parity import load_fixture


def test_koleo_parity():
    for i, case in enumerate(load_fixture("koleo")["cases"]):
        loss = koleo_loss(case["x"])
        assert torch.isfinite(loss)
        assert_close(loss, case["loss"], rtol=1e-5, atol=1e-6, msg=lambda m, i=i: f"case {i}: {m}")


def test_koleo_finite_with_duplicate_rows():
    x = torch.randn(6, 8)
    x[3] = x[1]
    x.requires_grad_(True)
    loss = koleo_loss(x)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_koleo_scale_invariant_and_spreading_lowers_it():
    x = torch.randn(16, 8)
    assert_close(koleo_loss(x), koleo_loss(3.0 * x))
    clustered = torch.randn(1, 8) + 0.01 * torch.randn(16, 8)
    assert koleo_loss(x) < koleo_loss(clustered)


def test_koleo_fp32_under_bf16_autocast():
    x = torch.randn(8, 12).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = koleo_loss(x)
    assert loss.dtype == torch.float32
    assert_close(loss, koleo_loss(x.float()))


def test_koleo_validation():
    with pytest.raises(ValueError, match="features"):
        koleo_loss(torch.randn(1, 4))
    with pytest.raises(ValueError, match="features"):
        koleo_loss(torch.randn(4))
    with pytest.raises(ValueError, match="eps"):
        koleo_loss(torch.randn(3, 4), eps=0.0)
