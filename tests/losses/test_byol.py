"""BYOL regression loss: values at the extremes, definition, fp32, validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from ssl_zoo.losses import byol_loss


def test_byol_extremes():
    x = torch.randn(5, 7)
    assert_close(byol_loss(x, x), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert_close(byol_loss(x, 2.5 * x), torch.tensor(0.0), atol=1e-6, rtol=0)  # scale-free
    assert_close(byol_loss(x, -x), torch.tensor(4.0))


def test_byol_definition():
    p, z = torch.randn(6, 9), torch.randn(6, 9)
    expected = (F.normalize(p, dim=-1) - F.normalize(z, dim=-1)).pow(2).sum(-1).mean()
    assert_close(byol_loss(p, z), expected)


def test_byol_fp32_under_bf16_autocast():
    p, z = torch.randn(4, 8).bfloat16(), torch.randn(4, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = byol_loss(p, z)
    assert loss.dtype == torch.float32
    assert_close(loss, byol_loss(p.float(), z.float()))


def test_byol_validation():
    with pytest.raises(ValueError, match="targets"):
        byol_loss(torch.randn(4, 8), torch.randn(4, 7))
