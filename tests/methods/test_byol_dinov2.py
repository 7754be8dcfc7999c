"""BYOL and DINOv2: one real step each, invariants, and bad input."""

import pytest
import torch

from ssl_zoo.optim.run_plan import RunPlan
from ssl_zoo.train import ConfigError, build_all
from tests.conftest import TINY_DATA, TINY_VIT

QUIET = ["callbacks.knn=null", "callbacks.progress=null", "callbacks.checkpoint=null", "~logger"]
TINY_DINOV2 = [*TINY_DATA, *TINY_VIT, *QUIET, "method=dinov2", "method.out_dim=128",
               "method.hidden_dim=64", "method.bottleneck_dim=32", "augmentation.transform.n_local=2"]
TINY_BYOL = [*TINY_DATA, *QUIET, "method=byol", "method.projector_hidden_dim=64", "method.predictor_hidden_dim=64",
             "method.projector_out_dim=32"]


def _method_and_batch(compose_cfg, overrides):
    parts = build_all(compose_cfg(overrides))
    datamodule = parts["datamodule"]
    datamodule.setup("fit")
    method = parts["method"]
    method.plan_run(RunPlan(total_steps=10, steps_per_data_epoch=5, global_batch_size=32))
    return method, next(iter(datamodule.train_dataloader())), parts


def test_dinov2_batch_carries_masks_and_step_logs_every_term(compose_cfg):
    method, batch, _ = _method_and_batch(compose_cfg, TINY_DINOV2)
    masks = batch["masks"]
    assert masks.shape == (2 * 32, 64) and masks.dtype == torch.bool
    ratios = masks.float().mean(dim=1)
    masked_images = ratios > 0
    assert 0 < masked_images.sum() < len(ratios)  # about half the global crops get a mask
    assert ratios[masked_images].min() >= 0.1 - 1 / 64 and ratios.max() <= 0.5
    loss, logs = method.compute_loss(batch, step=0)
    assert torch.isfinite(loss)
    for term in ("dino_local_loss", "dino_global_loss", "ibot_loss", "koleo_loss"):
        assert term in logs and torch.isfinite(logs[term])
    total = sum(logs[t] for t in ("dino_local_loss", "dino_global_loss", "ibot_loss", "koleo_loss"))
    torch.testing.assert_close(total, loss.detach())
    loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert method.student["backbone"].mask_token.grad.abs().sum() > 0  # masked patches reached the loss


def test_dinov2_image_objective_runs_on_a_cnn_without_ibot(compose_cfg):
    overrides = [o for o in TINY_DINOV2 if not o.startswith(("backbone", "+backbone"))]
    overrides += ["backbone=resnet10t", "method.ibot_weight=0", "augmentation.masking=null"]
    method, batch, _ = _method_and_batch(compose_cfg, overrides)
    assert "masks" not in batch and method.student["backbone"].mask_token is None
    loss, logs = method.compute_loss(batch, step=0)
    assert torch.isfinite(loss) and logs["ibot_loss"] == 0 and logs["koleo_loss"] != 0
    torch.testing.assert_close(logs["dino_local_loss"] + logs["dino_global_loss"] + logs["koleo_loss"], loss.detach())
    loss.backward()
    assert method.student["backbone"].model.conv1[0].weight.grad.abs().sum() > 0


def test_dinov2_teacher_sees_unmasked_crops(compose_cfg):
    method, batch, _ = _method_and_batch(compose_cfg, TINY_DINOV2)
    seen = {}

    def record(name):
        def hook(module, args, kwargs):
            seen.setdefault(name, kwargs.get("masks"))  # first call: the global crops

        return hook

    method.teacher["backbone"].register_forward_pre_hook(record("teacher"), with_kwargs=True)
    method.student["backbone"].register_forward_pre_hook(record("student"), with_kwargs=True)
    method.compute_loss(batch, step=0)
    assert seen["teacher"] is None
    assert torch.equal(seen["student"], batch["masks"])


@pytest.mark.parametrize("targets", ["centering", "sinkhorn_knopp"])
@pytest.mark.parametrize("shared", [True, False])
def test_dinov2_target_strategies_and_head_sharing(compose_cfg, targets, shared):
    overrides = [*TINY_DINOV2, f"method.teacher_targets={targets}", f"method.separate_ibot_head={str(not shared).lower()}"]
    if not shared:
        overrides.append("method.ibot_out_dim=96")
    method, batch, _ = _method_and_batch(compose_cfg, overrides)
    assert ("ibot_head" in method.student) is not shared
    loss, _ = method.compute_loss(batch, step=0)
    assert torch.isfinite(loss)
    if targets == "centering":
        assert method.cls_targets is not method.patch_targets
        assert method.cls_targets.center.abs().sum() > 0 and method.patch_targets.center.abs().sum() > 0


def test_dinov2_layer_decay_and_patch_embed_multiplier_reach_the_optimizer(compose_cfg):
    method, _, _ = _method_and_batch(compose_cfg, TINY_DINOV2)
    optimizer = method.configure_optimizers()
    multipliers = [g["lr_multiplier"] for g in optimizer.param_groups]
    assert min(multipliers) == pytest.approx(0.2 * 0.9**3)  # patch embedding: 0.2 x 0.9^(depth+1)
    assert max(multipliers) == 1.0


@pytest.mark.parametrize("shared", [True, False])
def test_dinov2_head_last_layer_magnitude_is_trained(compose_cfg, shared):
    # dinov2 layers/dino_head.py: weight_g filled with 1 and left trainable (DINO v1's
    # norm_last_layer would freeze it).
    overrides = [*TINY_DINOV2, f"method.separate_ibot_head={str(not shared).lower()}"]
    method, batch, _ = _method_and_batch(compose_cfg, overrides)
    heads = [name for name in ("dino_head", "ibot_head") if name in method.student]
    optimizer_params = {id(p) for g in method.configure_optimizers().param_groups for p in g["params"]}
    for name in heads:
        magnitude = method.student[name].last_layer.parametrizations.weight.original0
        assert magnitude.requires_grad and torch.all(magnitude == 1)
        assert id(magnitude) in optimizer_params
    loss, _ = method.compute_loss(batch, step=0)
    loss.backward()
    assert method.student["dino_head"].last_layer.parametrizations.weight.original0.grad.abs().sum() > 0


def test_dinov2_clips_each_student_submodule_separately(compose_cfg):
    method, _, _ = _method_and_batch(compose_cfg, [*TINY_DINOV2, "method.separate_ibot_head=true",
                                                   "method.ibot_out_dim=96"])
    assert method.optim.grad_clip_mode == "per_module"
    generator = torch.Generator().manual_seed(0)
    scales = {"backbone": 10.0, "dino_head": 5.0, "ibot_head": 1e-4}  # the last one is under 3
    for name, module in method.student.items():
        for p in module.parameters():
            p.grad = torch.randn(p.shape, generator=generator) * scales[name]
    before = {name: [p.grad.clone() for p in m.parameters()] for name, m in method.student.items()}
    method.configure_gradient_clipping(None)
    for name, module in method.student.items():
        grads = [p.grad for p in module.parameters()]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in before[name]]))
        coef = min(1.0, 3.0 / (norm.item() + 1e-6))
        for g, b in zip(grads, before[name], strict=True):
            torch.testing.assert_close(g, b * coef, rtol=1e-5, atol=1e-9)
    # one global norm would have shrunk the small head too
    assert torch.equal(method.student["ibot_head"].mlp[0].weight.grad, before["ibot_head"][0])


@pytest.mark.parametrize("method_name", ["dinov2", "dino"])
def test_global_clipping_stays_an_option(compose_cfg, method_name):
    overrides = TINY_DINOV2 if method_name == "dinov2" else [*TINY_DATA, *TINY_VIT, *QUIET, "method.out_dim=128",
                                                              "method.hidden_dim=64", "method.bottleneck_dim=32"]
    method, _, _ = _method_and_batch(compose_cfg, [*overrides, "optim.grad_clip_mode=global"])
    params = [p for p in method.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for r, p in zip(reference, params):
        r.grad = p.grad.clone()
    total = torch.nn.utils.clip_grad_norm_(reference, 3.0)
    assert total > 3.0  # the clip really scales
    method.configure_gradient_clipping(None)  # one norm over every parameter, as torch's
    for r, p in zip(reference, params):
        torch.testing.assert_close(p.grad, r.grad)


def test_byol_step_is_symmetric_and_target_frozen(compose_cfg):
    method, batch, _ = _method_and_batch(compose_cfg, TINY_BYOL)
    assert batch["local_crops"] is None and batch["global_crops"].shape[0] == 64
    loss, logs = method.compute_loss(batch, step=0)
    assert 0 <= loss.item() <= 8  # two terms of 2 - 2cos, each in [0, 4]
    loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert method.predictor.mlp[0].weight.grad is not None
    # swapping the two views leaves the symmetric loss unchanged (same BN batch, eval-free)
    v1, v2 = batch["global_crops"].chunk(2)
    method.eval()
    a, _ = method.compute_loss({**batch, "global_crops": torch.cat((v1, v2))}, step=0)
    b, _ = method.compute_loss({**batch, "global_crops": torch.cat((v2, v1))}, step=0)
    torch.testing.assert_close(a, b)


def _byol_loss_by_hand(method, views, per_view):
    """BYOL's loss with each network applied once per view (the reference's apply_once_fn)
    or once to both views together."""
    from ssl_zoo.losses import byol_loss

    chunks = views.chunk(2) if per_view else (views,)
    online = lambda x: method.predictor(method.student["projector"](method.student["backbone"](x)["cls"]))  # noqa: E731
    target = lambda x: method.teacher["projector"](method.teacher["backbone"](x)["cls"])  # noqa: E731
    with torch.no_grad():
        z1, z2 = torch.cat([target(x) for x in chunks]).chunk(2)
        p1, p2 = torch.cat([online(x) for x in chunks]).chunk(2)
    return byol_loss(p1, z2) + byol_loss(p2, z1)


def test_byol_batchnorm_statistics_are_per_view_by_default(compose_cfg):
    method, batch, _ = _method_and_batch(compose_cfg, TINY_BYOL)
    assert method.batchnorm_per_view
    views = batch["global_crops"]
    loss, _ = method.compute_loss(batch, step=0)
    torch.testing.assert_close(loss.detach(), _byol_loss_by_hand(method, views, per_view=True))
    pooled = _byol_loss_by_hand(method, views, per_view=False)
    assert (loss.detach() - pooled).abs() > 1e-4  # BatchNorm over both views is another objective
    method.batchnorm_per_view = False
    torch.testing.assert_close(method.compute_loss(batch, step=0)[0].detach(), pooled)


def test_byol_heads_have_no_output_bias_and_target_init_is_a_choice(compose_cfg):
    method, _, _ = _method_and_batch(compose_cfg, TINY_BYOL)
    assert method.student["projector"].mlp[-1].bias is None and method.predictor.mlp[-1].bias is None
    for t, s in zip(method.teacher.parameters(), method.student.parameters()):
        assert torch.equal(t, s)  # target_init=copy
    method, _, _ = _method_and_batch(compose_cfg, [*TINY_BYOL, "method.target_init=independent"])
    pairs = list(zip(method.teacher.named_parameters(), method.student.parameters()))
    differing = [name for (name, t), s in pairs if t.ndim > 1 and not torch.equal(t, s)]
    assert len(differing) == sum(t.ndim > 1 for (_, t), _ in pairs)  # every weight drawn afresh
    for (name, t), s in pairs:  # ... with the same initialisation scheme
        if t.ndim > 1 and t.numel() > 500:
            assert t.std().item() == pytest.approx(s.std().item(), rel=0.25), name
    with pytest.raises(ConfigError, match=r"method\.target_init=independent.*backbone\.init_from"):
        build_all(compose_cfg([*TINY_BYOL, "method.target_init=independent", "backbone.init_from=/x.pt"]))


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "lars"])
def test_byol_optimizers(compose_cfg, optimizer):
    method, _, _ = _method_and_batch(compose_cfg, [*TINY_BYOL, f"optim/optimizer={optimizer}"])
    opt = method.configure_optimizers()
    assert opt.__class__.__name__.lower() == {"adamw": "adamw", "sgd": "sgd", "lars": "lars"}[optimizer]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=dinov2", "backbone=resnet10t"], r"method=dinov2.*backbone=resnet10t"),
        (["method=dinov2", *TINY_VIT, "augmentation.masking.ratio_min_max=[0.6,0.2]"], "ratio"),
        (["method=dinov2", *TINY_VIT, "augmentation.masking.ratio_min_max=[0.1,1.5]"], "ratio"),
        (["method=dinov2", *TINY_VIT, "augmentation.masking.probability=2"], "probability"),
        (["method=dinov2", *TINY_VIT, "method.dino_weight=0"], r"method\.dino_weight"),
        (["method=dinov2", *TINY_VIT, "method.koleo_weight=-1"], r"method\.koleo_weight"),
        (["method=dinov2", *TINY_VIT, "method.separate_ibot_head=false", "method.ibot_out_dim=96"], r"method\.ibot_out_dim"),
        (["method=byol", "augmentation.transform.n_local=2"], r"augmentation\.transform\.n_local"),
        (["method=byol", "optim.grad_clip_mode=layerwise"], r"optim\.grad_clip_mode"),
        (["method=byol", "method.target_init=random"], r"method\.target_init"),
        (["method=dinov2", *TINY_VIT, "method.patch_center_reduction=median"], r"method\.patch_center_reduction"),
        (["method=byol", "optim.schedule.warmup_rule=cosine"], r"optim\.schedule\.warmup_rule"),
        (["method=byol", "optim.schedule.iterations_per_epoch=imgs"], r"optim\.schedule\.iterations_per_epoch"),
        (["method=dinov2", *TINY_VIT, "optim.schedule.iterations_per_epoch=0"], r"optim\.schedule\.iterations_per_epoch"),
        (["method=dinov2", *TINY_VIT, "augmentation.masking=null"], r"augmentation\.masking is null.*ibot_weight=0"),
        (["method=dinov2", "backbone=resnet10t", "method.ibot_weight=0"], r"no patch tokens.*augmentation\.masking=null"),
    ],
)
def test_bad_method_config_fails_before_training(compose_cfg, overrides, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        parts = build_all(compose_cfg([*TINY_DATA, *QUIET, *overrides]))
        parts["method"].configure_optimizers()
