"""The full DINOv2 objective: parity for both teacher-target strategies, no local crops."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from ssl_zoo.losses import (
    build_teacher_targets,
    dinov2_cross_entropy,
    dinov2_objective,
    patch_weights_from_masks,
)
from tests.parity import load_fixture

# Fixture key -> objective key.
TERMS = {
    "dino_local_crops_loss": "dino_local",
    "dino_global_crops_loss": "dino_global",
    "koleo_loss": "koleo",
    "ibot_loss": "ibot",
    "total": "total",
}


def _objective_from_case(case: dict) -> dict[str, torch.Tensor]:
    inputs = case["inputs"]
    out_dim = inputs["teacher_global_logits"].shape[-1]
    # Separate strategies (and centers) for the CLS and patch heads, as in DINOv2.
    cls_targets = build_teacher_targets(case["centering"], out_dim)
    patch_targets = build_teacher_targets(case["centering"], out_dim)
    masks = inputs["masks"]
    return dinov2_objective(
        student_local_cls=inputs["student_local_logits"],
        student_global_cls=inputs["student_global_logits"],
        teacher_global_probs=cls_targets.targets(
            inputs["teacher_global_logits"], case["teacher_temp"]
        ),
        student_global_backbone_cls=inputs["student_global_cls"],
        student_masked_patch_logits=inputs["student_masked_patch_logits"],
        teacher_masked_patch_probs=patch_targets.targets(
            inputs["teacher_masked_patch_logits"], case["teacher_temp"]
        ),
        patch_weights=patch_weights_from_masks(masks),
        n_images=masks.shape[0],
        n_local_views=case["n_local_crops"],
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


def _random_inputs(n_local: int, batch: int = 3, k: int = 10, d: int = 6) -> dict:
    torch.manual_seed(n_local)
    masks = torch.rand(2 * batch, 5) < 0.4
    m = int(masks.sum())
    return dict(
        student_local_cls=torch.randn(n_local * batch, k) if n_local else None,
        student_global_cls=torch.randn(2 * batch, k, requires_grad=True),
        teacher_global_probs=torch.softmax(torch.randn(2 * batch, k), -1),
        student_global_backbone_cls=torch.randn(2 * batch, d, requires_grad=True),
        student_masked_patch_logits=torch.randn(m, k),
        teacher_masked_patch_probs=torch.softmax(torch.randn(m, k), -1),
        patch_weights=patch_weights_from_masks(masks),
        n_images=2 * batch,
        n_local_views=n_local,
    )


def test_dinov2_objective_without_local_views():
    inputs = _random_inputs(n_local=0)
    terms = dinov2_objective(**inputs)
    assert terms["dino_local"].item() == 0.0
    # Only the two swapped global pairs remain: n_terms = 2.
    s, t = inputs["student_global_cls"], inputs["teacher_global_probs"]
    b = s.shape[0] // 2
    expected = (
        dinov2_cross_entropy(s[:b], t[b:], 1, 1) + dinov2_cross_entropy(s[b:], t[:b], 1, 1)
    ) / 2
    assert_close(terms["dino_global"], expected)
    total = terms["dino_global"] + terms["koleo"] + terms["ibot"]
    assert_close(terms["total"], total)
    terms["total"].backward()
    assert torch.isfinite(inputs["student_global_cls"].grad).all()
    # An empty tensor is accepted as "no local views" too.
    inputs["student_local_cls"] = torch.zeros(0, 10)
    assert_close(dinov2_objective(**inputs)["total"], terms["total"])


def test_dinov2_objective_weights_scale_terms():
    inputs = _random_inputs(n_local=2)
    base = dinov2_objective(**inputs)
    scaled = dinov2_objective(**inputs, dino_weight=2.0, ibot_weight=0.5, koleo_weight=0.0)
    assert_close(scaled["dino_local"], 2 * base["dino_local"])
    assert_close(scaled["dino_global"], 2 * base["dino_global"])
    assert_close(scaled["ibot"], 0.5 * base["ibot"])
    assert scaled["koleo"].item() == 0.0


def test_dinov2_objective_fp32_under_bf16_autocast():
    inputs = _random_inputs(n_local=2)
    reference = dinov2_objective(**inputs)
    bf16 = {
        k: (v.detach().bfloat16() if torch.is_tensor(v) and v.is_floating_point() else v)
        for k, v in inputs.items()
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = dinov2_objective(**bf16)
    for key, value in terms.items():
        assert value.dtype == torch.float32, key
        assert_close(value, reference[key], rtol=0.05, atol=0.05)  # bf16 inputs only


def test_dinov2_objective_validation():
    inputs = _random_inputs(n_local=2)
    with pytest.raises(ValueError, match="n_local_views"):
        dinov2_objective(**{**inputs, "n_local_views": 3})
    with pytest.raises(ValueError, match="n_local_views"):
        dinov2_objective(**{**inputs, "n_local_views": -1})
    with pytest.raises(ValueError, match="koleo_weight"):
        dinov2_objective(**inputs, koleo_weight=-0.1)
    with pytest.raises(ValueError, match="teacher_global_probs"):
        dinov2_objective(**{**inputs, "teacher_global_probs": inputs["teacher_global_probs"][:2]})
    with pytest.raises(ValueError, match="student_global_backbone_cls"):
        bad = inputs["student_global_backbone_cls"][:2]
        dinov2_objective(**{**inputs, "student_global_backbone_cls": bad})
