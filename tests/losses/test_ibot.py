"""iBOT patch loss: parity (masked, dense, patch targets), equivalences, fp32, validation."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from ssl_zoo.losses import (
    SoftmaxCentering,
    ibot_patch_loss,
    ibot_patch_loss_dense,
    patch_weights_from_masks,
    sinkhorn_knopp,
)
from tests.parity import load_fixture


def test_ibot_patch_loss_parity():
    fx = load_fixture("ibot_patch_loss")
    masks = fx["masks"]
    loss = ibot_patch_loss(
        fx["masked_student"],
        fx["masked_teacher_probs"],
        patch_weights_from_masks(masks),
        n_images=masks.shape[0],
        student_temp=fx["student_temp"],
    )
    assert_close(loss, fx["loss_masked"], rtol=1e-5, atol=1e-6)
    dense = ibot_patch_loss_dense(
        fx["full_student"], fx["full_teacher_probs"], masks, student_temp=fx["student_temp"]
    )
    assert_close(dense, fx["loss_full"], rtol=1e-5, atol=1e-6)


def test_ibot_patch_targets_parity():
    fx = load_fixture("ibot_patch_loss")
    logits = fx["teacher_patch_logits"]
    centering = SoftmaxCentering(logits.shape[-1], momentum=fx["center_momentum"])
    assert_close(
        centering.targets(logits, fx["teacher_temp"]), fx["centered_probs"], rtol=1e-5, atol=1e-7
    )
    centering.update(logits)
    assert_close(
        centering.center, fx["center_after"].reshape(centering.center.shape), rtol=1e-5, atol=1e-7
    )
    # Sinkhorn-Knopp over the M masked patches: B = M.
    assert_close(
        sinkhorn_knopp(logits, fx["teacher_temp"]), fx["sinkhorn_targets"], rtol=1e-5, atol=1e-7
    )


def test_patch_weights_from_masks():
    masks = torch.tensor([[True, False, True, True], [False] * 4, [False, True, False, False]])
    weights = patch_weights_from_masks(masks)
    assert_close(weights, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0]))
    # Each image with a masked patch contributes a total weight of 1.
    assert_close(weights.sum(), torch.tensor(2.0))


def test_dense_matches_masked():
    torch.manual_seed(0)
    b, n, k = 3, 6, 5
    s = torch.randn(b, n, k)
    t = torch.softmax(torch.randn(b, n, k), dim=-1)
    masks = torch.rand(b, n) < 0.5
    masks[1] = False  # an image without masked patches still counts in B
    masks[0, 0] = True
    dense = ibot_patch_loss_dense(s, t, masks, 0.1)
    gathered = ibot_patch_loss(s[masks], t[masks], patch_weights_from_masks(masks), b, 0.1)
    assert_close(dense, gathered)


def test_ibot_empty_mask_is_zero():
    k = 4
    loss = ibot_patch_loss(torch.zeros(0, k), torch.zeros(0, k), torch.zeros(0), n_images=2)
    assert loss.item() == 0.0


def test_ibot_fp32_under_bf16_autocast():
    masks = torch.tensor([[True, False, True], [False, True, True]])
    s = torch.randn(2, 3, 8).bfloat16()
    t = torch.softmax(torch.randn(2, 3, 8), dim=-1).bfloat16()
    w = patch_weights_from_masks(masks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        masked = ibot_patch_loss(s[masks], t[masks], w, 2)
        dense = ibot_patch_loss_dense(s, t, masks)
    assert masked.dtype == dense.dtype == torch.float32
    assert_close(masked, ibot_patch_loss(s[masks].float(), t[masks].float(), w, 2))
    assert_close(dense, ibot_patch_loss_dense(s.float(), t.float(), masks))


def test_ibot_validation():
    s, t, w = torch.randn(5, 4), torch.softmax(torch.randn(5, 4), -1), torch.ones(5)
    with pytest.raises(ValueError, match="student_temp"):
        ibot_patch_loss(s, t, w, 2, student_temp=-1.0)
    with pytest.raises(ValueError, match="n_images"):
        ibot_patch_loss(s, t, w, 0)
    with pytest.raises(ValueError, match="patch_weights"):
        ibot_patch_loss(s, t, torch.ones(4), 2)
    with pytest.raises(ValueError, match="teacher_patch_probs"):
        ibot_patch_loss(s, t[:4], w, 2)
    with pytest.raises(ValueError, match="masks"):
        ibot_patch_loss_dense(s[None], t[None], torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="masks"):
        patch_weights_from_masks(torch.ones(2, 3))
