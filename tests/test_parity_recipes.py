"""Recipe parity: a paper preset trains, step for step, what the reference code trains.

``recipes.pt`` (see ../shared/parity/README.md) holds, for each preset, the cluster it was
run on (world size, per-process batch, data size) and the effective hyper-parameters at a
sample of optimizer steps, computed with the reference code's own schedule functions.
Here each preset is composed through Hydra, built as the trainer builds it (on the meta
device: a ViT-L costs nothing), its run length planned from the same simulated cluster
and data (no data is loaded), and the schedules applied to its real optimizer.
"""

from __future__ import annotations

import pytest
import torch

from ssl_zoo.data.sampling import batches_per_epoch
from ssl_zoo.optim.run_plan import plan_run_length
from ssl_zoo.train import build_backbone, build_method
from tests.conftest import compose_config
from tests.parity import load_fixture, parity_dir
from tests.reference_schedules import byol_recipe

REL = 1e-6


def _recipes() -> dict:
    """The fixture's recipes, plus BYOL's re-derived from its reference code when the
    fixture has none (tests/reference_schedules.py)."""
    recipes = load_fixture("recipes")
    recipes.setdefault("byol_r50_in1k", byol_recipe())
    return recipes


def _recipe_names() -> list[str]:
    path = parity_dir() / "recipes.pt"
    if not path.is_file():
        return ["recipes.pt-missing"]  # the test then fails, naming the path
    return sorted(torch.load(path, weights_only=True).keys() | {"byol_r50_in1k"})


def build_as_trainer_would(name: str, world_size: int, batch_size: int, dataset_size: int, run_dir):
    """The preset's method with its schedules sized for this cluster and data, its
    optimizer, and the run length."""
    cfg = compose_config([f"experiment={name}", f"data.batch_size={batch_size}"], run_dir)
    with torch.device("meta"):
        backbone = build_backbone(cfg)
        method = build_method(cfg, backbone)
    accumulate = cfg.trainer.accumulate_grad_batches
    batches = batches_per_epoch(dataset_size, world_size, batch_size, drop_last=True)
    run = plan_run_length(batches, accumulate, cfg.trainer.max_epochs, cfg.trainer.max_steps,
                          global_batch_size=world_size * batch_size * accumulate, images_per_epoch=dataset_size,
                          epochs_of_images=method.schedule.epochs_of_images)
    method.plan_run(run)
    return method, method.configure_optimizers(), run


def _close(actual: float, expected: float) -> bool:
    return actual == pytest.approx(expected, rel=REL, abs=1e-12)


@pytest.mark.parametrize("name", _recipe_names())
def test_parity_recipe_preset_matches_reference_schedules(tmp_path, name):
    recipe = _recipes()[name]
    assert recipe["experiment"] == name
    method, optimizer, run = build_as_trainer_would(
        name, recipe["world_size"], recipe["batch_size_per_gpu"], recipe["dataset_size"], tmp_path
    )
    assert run.total_steps == recipe["total_iterations"]
    per_epoch = float(recipe["iterations_per_epoch"])
    if per_epoch.is_integer():
        assert method.steps_per_epoch == per_epoch
    else:  # BYOL: an epoch is images / global batch steps
        assert float(method.schedule.epoch_steps) == pytest.approx(per_epoch, rel=1e-12)
    if "warmup_iterations" in recipe:
        assert method.schedule.warmup_steps == recipe["warmup_iterations"]

    if "drop_path_per_block" in recipe:
        backbone = method.student["backbone"]
        rates = [backbone.adapter.drop_path_rate(block) for block in backbone.blocks()]
        expected_rates = recipe["drop_path_per_block"].tolist()
        assert len(rates) == len(expected_rates)
        bad_rates = [(i, a, e) for i, (a, e) in enumerate(zip(rates, expected_rates)) if not _close(a, e)]
        assert not bad_rates, f"{name}: drop-path rate per block (block, ours, reference): {bad_rates}"

    regular = [g for g in optimizer.param_groups if not g["is_last_layer"] and g["lr_multiplier"] > 0]
    last_layer = [g for g in optimizer.param_groups if g["is_last_layer"]]
    decayed = [g for g in optimizer.param_groups if g["wd_multiplier"] == 1.0]
    assert regular and decayed
    assert last_layer or "last_layer_lr" not in recipe

    mismatches = []
    for index, step in enumerate(recipe["iterations"].tolist()):
        method.apply_schedules(optimizer, step)
        ours = {
            "lr": lambda: [g["lr"] / g["lr_multiplier"] for g in regular],
            "weight_decay": lambda: [g["weight_decay"] for g in decayed],
            "last_layer_lr": lambda: [g["lr"] / g["lr_multiplier"] for g in last_layer],
            "teacher_momentum": lambda step=step: [method.momentum_at(step)],
            "teacher_temp": lambda step=step: [method.teacher_temp_at(step)],
        }
        checked = [key for key in ours if key in recipe]
        assert {"lr", "weight_decay", "teacher_momentum"} <= set(checked), f"{name}: fixture lacks {set(ours) - set(checked)}"
        for key in checked:
            values = ours[key]()
            expected = float(recipe[key][index])
            if not all(_close(v, expected) for v in values):
                mismatches.append(f"step {step} {key}: ours {sorted(set(values))}, reference {expected}")
    assert not mismatches, f"{name}: {len(mismatches)} mismatches:\n" + "\n".join(mismatches[:20])
