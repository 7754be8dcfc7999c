"""iBOT patch loss: parity (masked, dense, patch targets), equivalences, fp32, validation."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from ssl_zoo.losses import MaskedPatches, SoftmaxCentering, ibot_patch_loss, sinkhorn_knopp
from tests.parity import load_fixture
from tests.reference import ibot_patch_loss_dense, patch_weights_from_masks


def _mask_weights(masks: torch.Tensor) -> torch.Tensor:
    """(B,) per image, as the collate computes them."""
    return 1.0 / masks.sum(dim=1).clamp(min=1).to(torch.float32)


def test_ibot_patch_loss_parity():
    fx = load_fixture("ibot_patch_loss")
    masks = fx["masks"]
    patches = MaskedPatches.from_masks(
        fx["masked_student"], fx["masked_teacher_probs"], masks, _mask_weights(masks)
    )
    assert patches.n_images == masks.shape[0]
    loss = ibot_patch_loss(patches, student_temp=fx["student_temp"])
    assert_close(loss, fx["loss_masked"], rtol=1e-5, atol=1e-6)
    # The reference's dense form (every patch computed, the mask selecting) agrees.
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


def test_patch_weights_from_the_batch_mask_weights():
    masks = torch.tensor([[True, False, True, True], [False] * 4, [False, True, False, False]])
    k = 3
    patches = MaskedPatches.from_masks(
        torch.zeros(4, k), torch.zeros(4, k), masks, _mask_weights(masks)
    )
    assert_close(patches.weights, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0]))
    assert_close(patches.weights, patch_weights_from_masks(masks))
    # Each image with a masked patch contributes a total weight of 1.
    assert_close(patches.weights.sum(), torch.tensor(2.0))
    assert patches.n_images == 3  # the image without a masked patch counts


def test_gathered_matches_dense():
    torch.manual_seed(0)
    b, n, k = 3, 6, 5
    s = torch.randn(b, n, k)
    t = torch.softmax(torch.randn(b, n, k), dim=-1)
    masks = torch.rand(b, n) < 0.5
    masks[1] = False  # an image without masked patches still counts in B
    masks[0, 0] = True
    dense = ibot_patch_loss_dense(s, t, masks, 0.1)
    gathered = ibot_patch_loss(
        MaskedPatches.from_masks(s[masks], t[masks], masks, _mask_weights(masks)), 0.1
    )
    assert_close(gathered, dense)


def test_ibot_empty_mask_is_zero():
    k = 4
    loss = ibot_patch_loss(
        MaskedPatches(torch.zeros(0, k), torch.zeros(0, k), torch.zeros(0), n_images=2)
    )
    assert loss.item() == 0.0


def test_ibot_fp32_under_bf16_autocast():
    masks = torch.tensor([[True, False, True], [False, True, True]])
    s = torch.randn(2, 3, 8).bfloat16()
    t = torch.softmax(torch.randn(2, 3, 8), dim=-1).bfloat16()
    w = _mask_weights(masks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        masked = ibot_patch_loss(MaskedPatches.from_masks(s[masks], t[masks], masks, w))
    assert masked.dtype == torch.float32
    expected = ibot_patch_loss(
        MaskedPatches.from_masks(s[masks].float(), t[masks].float(), masks, w)
    )
    assert_close(masked, expected)
    assert_close(masked, ibot_patch_loss_dense(s.float(), t.float(), masks))


def test_ibot_validation():
    s, t, w = torch.randn(5, 4), torch.softmax(torch.randn(5, 4), -1), torch.ones(5)
    with pytest.raises(ValueError, match="student_temp"):
        ibot_patch_loss(MaskedPatches(s, t, w, 2), student_temp=-1.0)
    with pytest.raises(ValueError, match="n_images"):
        ibot_patch_loss(MaskedPatches(s, t, w, 0))
    with pytest.raises(ValueError, match="weights"):
        ibot_patch_loss(MaskedPatches(s, t, torch.ones(4), 2))
    with pytest.raises(ValueError, match="teacher_probs"):
        ibot_patch_loss(MaskedPatches(s, t[:4], w, 2))
    with pytest.raises(ValueError, match="masks"):
        MaskedPatches.from_masks(s, t, torch.ones(2, 3), torch.ones(2))
    with pytest.raises(ValueError, match="mask_weights"):
        MaskedPatches.from_masks(s, t, torch.ones(2, 3, dtype=torch.bool), torch.ones(3))
