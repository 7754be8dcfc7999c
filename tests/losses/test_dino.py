"""DINO cross-entropies: parity with DINO v1 and DINOv2, pair structure, fp32, validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from ssl_zoo.losses import (
    SoftmaxCentering,
    dino_cross_entropy_matrix,
    dino_loss,
    dinov2_cross_entropy,
)
from tests.parity import load_fixture


def test_dino_v1_loss_parity_with_center_updates():
    fx = load_fixture("dino_v1_loss")
    hp = fx["hparams"]
    batch = fx["batch_size"]
    centering = SoftmaxCentering(fx["out_dim"], momentum=hp["center_momentum"])
    for i, step in enumerate(fx["steps"]):
        n_teacher_views = step["teacher_output"].shape[0] // batch
        probs = centering.targets(step["teacher_output"], step["teacher_temp"])
        loss = dino_loss(
            step["student_output"], probs, hp["ncrops"], n_teacher_views, hp["student_temp"]
        )
        assert_close(loss, step["loss"], rtol=1e-5, atol=1e-6, msg=lambda m, i=i: f"step {i}: {m}")
        centering.update(step["teacher_output"])
        assert_close(
            centering.center,
            step["center_after"],
            rtol=1e-5,
            atol=1e-7,
            msg=lambda m, i=i: f"step {i} center: {m}",
        )


def test_dinov2_cross_entropy_parity():
    fx = load_fixture("dinov2_cross_entropy")
    students, teachers = fx["student_output_list"], fx["teacher_probs_list"]
    loss = dinov2_cross_entropy(
        torch.cat(students), torch.cat(teachers), len(students), len(teachers), fx["student_temp"]
    )
    assert_close(loss, fx["loss"], rtol=1e-5, atol=1e-6)


def _naive_ce(t: torch.Tensor, s: torch.Tensor, temp: float) -> torch.Tensor:
    return -(t * F.log_softmax(s / temp, dim=-1)).sum(-1).mean()


def test_cross_entropy_matrix_matches_pairwise_definition():
    torch.manual_seed(0)
    n_s, n_t, batch, k = 4, 2, 3, 7
    s = torch.randn(n_s * batch, k)
    t = torch.softmax(torch.randn(n_t * batch, k), dim=-1)
    ce = dino_cross_entropy_matrix(s, t, n_s, n_t, 0.2)
    assert ce.shape == (n_t, n_s)
    s_views, t_views = s.chunk(n_s), t.chunk(n_t)
    expected = torch.stack(
        [torch.stack([_naive_ce(tv, sv, 0.2) for sv in s_views]) for tv in t_views]
    )
    assert_close(ce, expected)
    # DINO v1 skips the student view that is the teacher's own crop, and averages.
    off = [expected[i, v] for i in range(n_t) for v in range(n_s) if v != i]
    assert_close(dino_loss(s, t, n_s, n_t, 0.2), torch.stack(off).mean())
    assert_close(dinov2_cross_entropy(s, t, n_s, n_t, 0.2), expected.sum())


def test_dino_gradient_reaches_student_only():
    s = torch.randn(6, 5, requires_grad=True)
    t = torch.softmax(torch.randn(4, 5), dim=-1)
    dino_loss(s, t, 3, 2).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_dino_fp32_under_bf16_autocast():
    s = torch.randn(8, 16).bfloat16()
    t = torch.softmax(torch.randn(4, 16), dim=-1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ce = dino_cross_entropy_matrix(s, t, 4, 2)
        loss = dino_loss(s, t, 4, 2)
    assert ce.dtype == loss.dtype == torch.float32
    assert_close(ce, dino_cross_entropy_matrix(s.float(), t.float(), 4, 2))
    assert_close(loss, dino_loss(s.float(), t.float(), 4, 2))


def test_dino_validation():
    s, t = torch.randn(6, 5), torch.softmax(torch.randn(4, 5), -1)
    with pytest.raises(ValueError, match="student_temp"):
        dino_loss(s, t, 3, 2, student_temp=0.0)
    with pytest.raises(ValueError, match="n_student_views"):
        dino_cross_entropy_matrix(s, t, 4, 2)  # 6 rows are not 4 views
    with pytest.raises(ValueError, match="n_teacher_views"):
        dino_cross_entropy_matrix(s, t, 3, 0)
    with pytest.raises(ValueError, match="n_teacher_views"):
        dino_loss(s, torch.softmax(torch.randn(8, 5), -1), 3, 4)  # T > S
    with pytest.raises(ValueError, match="teacher views"):
        dino_cross_entropy_matrix(s, t, 3, 1)  # B=2 vs B=4
    with pytest.raises(ValueError, match="n_student_views"):
        dino_loss(s[:2], t[:2], 1, 1)  # no pair v != i
