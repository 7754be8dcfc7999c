"""DINO cross-entropies: parity with DINO v1 and DINOv2, pair structure, views, fp32, validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from ssl_zoo.losses import SoftmaxCentering, Views, dino_cross_entropy_matrix, dino_loss
from tests.parity import load_fixture


def _views(rows: torch.Tensor, n_views: int, n_global: int) -> Views:
    return Views.from_rows(rows, rows.shape[0] // n_views, n_global)


def test_dino_v1_loss_parity_with_center_updates():
    fx = load_fixture("dino_v1_loss")
    hp = fx["hparams"]
    batch = fx["batch_size"]
    centering = SoftmaxCentering(fx["out_dim"], momentum=hp["center_momentum"])
    for i, step in enumerate(fx["steps"]):
        n_teacher_views = step["teacher_output"].shape[0] // batch
        probs = centering.targets(step["teacher_output"], step["teacher_temp"])
        loss = dino_loss(
            Views.from_rows(step["student_output"], batch, n_teacher_views),
            Views.from_rows(probs, batch, n_teacher_views),
            hp["student_temp"],
        )
        assert step["student_output"].shape[0] == hp["ncrops"] * batch
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
    # DINOv2's DINOLoss.forward: the sum of the cross-entropy of every (student, teacher) pair.
    fx = load_fixture("dinov2_cross_entropy")
    students, teachers = fx["student_output_list"], fx["teacher_probs_list"]
    ce = dino_cross_entropy_matrix(Views(students), Views(teachers), fx["student_temp"])
    assert ce.shape == (len(teachers), len(students))
    assert_close(ce.sum(), fx["loss"], rtol=1e-5, atol=1e-6)


def _naive_ce(t: torch.Tensor, s: torch.Tensor, temp: float) -> torch.Tensor:
    return -(t * F.log_softmax(s / temp, dim=-1)).sum(-1).mean()


def test_cross_entropy_matrix_matches_pairwise_definition():
    torch.manual_seed(0)
    n_s, n_t, batch, k = 4, 2, 3, 7
    s = torch.randn(n_s * batch, k)
    t = torch.softmax(torch.randn(n_t * batch, k), dim=-1)
    ce = dino_cross_entropy_matrix(_views(s, n_s, n_t), _views(t, n_t, n_t), 0.2)
    assert ce.shape == (n_t, n_s)
    s_views, t_views = s.chunk(n_s), t.chunk(n_t)
    expected = torch.stack(
        [torch.stack([_naive_ce(tv, sv, 0.2) for sv in s_views]) for tv in t_views]
    )
    assert_close(ce, expected)
    # DINO v1 skips the student view that is the teacher's own crop, and averages.
    off = [expected[i, v] for i in range(n_t) for v in range(n_s) if v != i]
    assert_close(dino_loss(_views(s, n_s, n_t), _views(t, n_t, n_t), 0.2), torch.stack(off).mean())


def test_views_from_rows_and_from_a_list_agree_and_rows_are_not_copied():
    torch.manual_seed(0)
    s = torch.randn(4 * 3, 5, requires_grad=True)
    t = torch.softmax(torch.randn(2 * 3, 5), dim=-1)
    split = _views(s, 4, 2)
    assert [v.data_ptr() for v in split.all] == [s[3 * i :].data_ptr() for i in range(4)]
    assert split.stacked().data_ptr() == s.data_ptr()  # a view of the rows, not a stack
    listed = Views([v.clone() for v in s.chunk(4)[:2]], [v.clone() for v in s.chunk(4)[2:]])
    assert listed.stacked().data_ptr() != s.data_ptr()
    assert_close(dino_loss(split, _views(t, 2, 2)), dino_loss(listed, Views(list(t.chunk(2)))))
    dino_loss(split, _views(t, 2, 2)).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_dino_fp32_under_bf16_autocast():
    s = torch.randn(8, 16).bfloat16()
    t = torch.softmax(torch.randn(4, 16), dim=-1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ce = dino_cross_entropy_matrix(_views(s, 4, 2), _views(t, 2, 2))
        loss = dino_loss(_views(s, 4, 2), _views(t, 2, 2))
    assert ce.dtype == loss.dtype == torch.float32
    assert_close(ce, dino_cross_entropy_matrix(_views(s.float(), 4, 2), _views(t.float(), 2, 2)))
    assert_close(loss, dino_loss(_views(s.float(), 4, 2), _views(t.float(), 2, 2)))


def test_dino_validation():
    s, t = torch.randn(6, 5), torch.softmax(torch.randn(4, 5), -1)
    student, teacher = _views(s, 3, 2), _views(t, 2, 2)
    with pytest.raises(ValueError, match="student_temp"):
        dino_loss(student, teacher, student_temp=0.0)
    with pytest.raises(ValueError, match="rows must be"):
        Views.from_rows(s, 4, 1)  # 6 rows are not views of 4 images
    with pytest.raises(ValueError, match="teacher views"):
        dino_cross_entropy_matrix(student, Views([]))
    with pytest.raises(ValueError, match="student views must all have one shape"):
        dino_cross_entropy_matrix(Views([s[:2], s[:3]]), teacher)
    with pytest.raises(ValueError, match="the teacher's views are the student's global views"):
        dino_loss(
            student, _views(torch.softmax(torch.randn(6, 5), -1), 3, 3)
        )  # 3 teacher views, 2 global
    with pytest.raises(ValueError, match="student and teacher views"):
        dino_cross_entropy_matrix(_views(s, 3, 1), _views(t, 1, 1))  # B=2 vs B=4
    with pytest.raises(ValueError, match="pair v != i"):
        dino_loss(_views(s[:2], 1, 1), _views(t[:2], 1, 1))  # no pair v != i
