"""The full DINOv2 objective: parity for both teacher-target strategies, no local crops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from ssl_zoo.losses import MaskedPatches, Views, build_teacher_targets, dinov2_objective
from tests.parity import load_fixture

# Fixture key -> objective key.
TERMS = {
    "dino_local_crops_loss": "dino_local",
    "dino_global_crops_loss": "dino_global",
    "koleo_loss": "koleo",
    "ibot_loss": "ibot",
    "total": "total",
}


def _mask_weights(masks: torch.Tensor) -> torch.Tensor:
    return 1.0 / masks.sum(dim=1).clamp(min=1).to(torch.float32)  # as the collate


def _objective_from_case(case: dict) -> dict[str, torch.Tensor]:
    inputs = case["inputs"]
    out_dim = inputs["teacher_global_logits"].shape[-1]
    batch = case["batch_size"]
    # Separate strategies (and centers) for the CLS and patch heads, as in DINOv2.
    cls_targets = build_teacher_targets(case["centering"], out_dim)
    patch_targets = build_teacher_targets(case["centering"], out_dim)
    masks = inputs["masks"]
    student_cls = torch.cat((inputs["student_global_logits"], inputs["student_local_logits"]))
    assert student_cls.shape[0] == (2 + case["n_local_crops"]) * batch
    teacher_probs = cls_targets.targets(inputs["teacher_global_logits"], case["teacher_temp"])
    return dinov2_objective(
        Views.from_rows(student_cls, batch, 2),
        Views.from_rows(teacher_probs, batch, 2),
        Views.from_rows(inputs["student_global_cls"], batch, 2),
        MaskedPatches.from_masks(
            inputs["student_masked_patch_logits"],
            patch_targets.targets(inputs["teacher_masked_patch_logits"], case["teacher_temp"]),
            masks,
            _mask_weights(masks),
        ),
        dino_weight=case["dino_loss_weight"],
        ibot_weight=case["ibot_loss_weight"],
        koleo_weight=case["koleo_loss_weight"],
        student_temp=case["student_temp"],
    )


def test_dinov2_objective_parity():
    cases = load_fixture("dinov2_objective")["cases"]
    assert {c["centering"] for c in cases} >= {"centering", "sinkhorn_knopp"}
    for case in cases:
        terms = _objective_from_case(case)
        assert set(terms) == set(TERMS.values())
        for fixture_key, key in TERMS.items():
            assert_close(
                terms[key],
                case["expected"][fixture_key],
                rtol=1e-5,
                atol=1e-6,
                msg=lambda m, c=case["centering"], k=key: f"{c} / {k}: {m}",
            )


def _random_tensors(
    n_local: int, batch: int = 3, k: int = 10, d: int = 6
) -> dict[str, torch.Tensor]:
    torch.manual_seed(n_local)
    masks = torch.rand(2 * batch, 5) < 0.4
    m = int(masks.sum())
    return dict(
        student_cls=torch.randn((2 + n_local) * batch, k, requires_grad=True),
        teacher_probs=torch.softmax(torch.randn(2 * batch, k), -1),
        features=torch.randn(2 * batch, d, requires_grad=True),
        patch_logits=torch.randn(m, k),
        patch_probs=torch.softmax(torch.randn(m, k), -1),
        masks=masks,
    )


def _objective(x: dict[str, torch.Tensor], batch: int = 3, **kwargs) -> dict[str, torch.Tensor]:
    return dinov2_objective(
        Views.from_rows(x["student_cls"], batch, 2),
        Views.from_rows(x["teacher_probs"], batch, 2),
        Views.from_rows(x["features"], batch, 2),
        MaskedPatches.from_masks(
            x["patch_logits"], x["patch_probs"], x["masks"], _mask_weights(x["masks"])
        ),
        **kwargs,
    )


def _ce(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    return -(teacher * F.log_softmax(student / 0.1, dim=-1)).sum(-1).mean()


def test_dinov2_objective_pairs_are_dinos():
    x = _random_tensors(n_local=2)
    terms = _objective(x)
    s, t = x["student_cls"].chunk(4), x["teacher_probs"].chunk(2)
    n_terms = 2 * 2 + 2
    # Each global view learns from the teacher's other view; each local view from both.
    assert_close(terms["dino_global"], (_ce(t[1], s[0]) + _ce(t[0], s[1])) / n_terms)
    assert_close(terms["dino_local"], sum(_ce(tv, sv) for tv in t for sv in s[2:]) / n_terms)


def test_dinov2_objective_without_local_views():
    x = _random_tensors(n_local=0)
    terms = _objective(x)
    assert terms["dino_local"].item() == 0.0
    # Only the two swapped global pairs remain: n_terms = 2.
    s, t = x["student_cls"].chunk(2), x["teacher_probs"].chunk(2)
    assert_close(terms["dino_global"], (_ce(t[1], s[0]) + _ce(t[0], s[1])) / 2)
    assert_close(terms["total"], terms["dino_global"] + terms["koleo"] + terms["ibot"])
    terms["total"].backward()
    assert torch.isfinite(x["student_cls"].grad).all()


def test_dinov2_objective_weights_scale_terms():
    x = _random_tensors(n_local=2)
    base = _objective(x)
    scaled = _objective(x, dino_weight=2.0, ibot_weight=0.5, koleo_weight=0.0)
    assert_close(scaled["dino_local"], 2 * base["dino_local"])
    assert_close(scaled["dino_global"], 2 * base["dino_global"])
    assert_close(scaled["ibot"], 0.5 * base["ibot"])
    assert scaled["koleo"].item() == 0.0


def test_dinov2_objective_without_masked_patches():
    x = _random_tensors(n_local=2)
    b = 3
    views = (
        Views.from_rows(x["student_cls"], b, 2),
        Views.from_rows(x["teacher_probs"], b, 2),
        Views.from_rows(x["features"], b, 2),
    )
    terms = dinov2_objective(*views, None, ibot_weight=0.0)
    assert terms["ibot"].item() == 0.0
    assert_close(terms["total"], _objective(x, ibot_weight=0.0)["total"])
    with pytest.raises(ValueError, match="ibot_weight=1.0 needs the masked patches"):
        dinov2_objective(*views, None)


def test_dinov2_objective_fp32_under_bf16_autocast():
    x = _random_tensors(n_local=2)
    reference = _objective(x)
    bf16 = {k: (v.detach().bfloat16() if v.is_floating_point() else v) for k, v in x.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = _objective(bf16)
    for key, value in terms.items():
        assert value.dtype == torch.float32, key
        assert_close(value, reference[key], rtol=0.05, atol=0.05)  # bf16 inputs only


def test_dinov2_objective_validation():
    x = _random_tensors(n_local=2)
    b = 3
    student, teacher = (
        Views.from_rows(x["student_cls"], b, 2),
        Views.from_rows(x["teacher_probs"], b, 2),
    )
    features = Views.from_rows(x["features"], b, 2)
    with pytest.raises(ValueError, match="student_cls must hold 2 global views"):
        dinov2_objective(
            Views.from_rows(x["student_cls"], b, 3), teacher, features, None, ibot_weight=0
        )
    with pytest.raises(ValueError, match="teacher_cls must hold the 2 global views"):
        dinov2_objective(
            student, Views.from_rows(x["teacher_probs"], b, 1), features, None, ibot_weight=0
        )
    with pytest.raises(ValueError, match="koleo_weight"):
        _objective(x, koleo_weight=-0.1)
    with pytest.raises(ValueError, match="teacher views"):
        dinov2_objective(
            student, Views.from_rows(x["teacher_probs"][:4], 2, 2), features, None, ibot_weight=0
        )
    with pytest.raises(ValueError, match="student_features"):
        dinov2_objective(
            student, teacher, Views.from_rows(x["features"][:4], 2, 2), None, ibot_weight=0
        )
