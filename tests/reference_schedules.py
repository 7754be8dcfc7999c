"""BYOL's per-step recipe, re-derived from the reference code (test code only).

deepmind-research byol (google-deepmind/deepmind-research f5de0ed):
- configs/byol.py ``get_config``: ``max_steps = num_epochs * N // batch_size`` and
  ``warmup_steps = 10 * N // batch_size`` with N = 1,281,167 (``Split.TRAIN_AND_VALID``);
  300-epoch presets lr 0.3, weight decay 1e-6, target EMA 0.99; LARS eta 1e-3, momentum 0.9;
- utils/schedules.py ``learning_schedule``: ``lr = base * batch / 256``, times
  ``step / warmup`` during the warm-up, then ``_cosine_decay(step - warmup, max_steps -
  warmup, lr)`` with ``_cosine_decay(s, n, v) = v * 0.5 * (1 + cos(pi * min(s, n) / n))``;
- ``target_ema(step) = 1 - (1 - base_ema) * _cosine_decay(step, max_steps, 1)``;
- the weight decay is constant (``add_weight_decay`` with the preset value).

The result has the layout of an entry of ``../shared/parity/recipes.pt`` (its README), so
``tests/test_parity_recipes.py`` checks it like the DINO and DINOv2 recipes.
"""

from __future__ import annotations

import math

import torch

IMAGENET_TRAIN_IMAGES = 1_281_167


def _cosine_decay(step: int, max_steps: int, value: float) -> float:
    return value * 0.5 * (1 + math.cos(math.pi * min(step, max_steps) / max_steps))


def byol_learning_rate(step: int, batch_size: int, base_lr: float, total_steps: int, warmup_steps: int) -> float:
    scaled = base_lr * batch_size / 256.0
    if step < warmup_steps:
        return step / warmup_steps * scaled
    return _cosine_decay(step - warmup_steps, total_steps - warmup_steps, scaled)


def byol_target_ema(step: int, base_ema: float, total_steps: int) -> float:
    return 1.0 - (1.0 - base_ema) * _cosine_decay(step, total_steps, 1.0)


def byol_recipe(
    world_size: int = 32,
    batch_size_per_gpu: int = 128,
    dataset_size: int = IMAGENET_TRAIN_IMAGES,
    num_epochs: int = 300,
    base_lr: float = 0.3,
    weight_decay: float = 1e-6,
    base_ema: float = 0.99,
) -> dict:
    batch = world_size * batch_size_per_gpu
    total = num_epochs * dataset_size // batch
    warmup = 10 * dataset_size // batch
    sample = {0, 1, 2, 100, warmup - 1, warmup, warmup + 1, total // 2, total - 2, total - 1}
    sample |= set(range(0, total, max(total // 37, 1)))
    steps = sorted(s for s in sample if 0 <= s < total)
    return {
        "experiment": "byol_r50_in1k",
        "world_size": world_size,
        "batch_size_per_gpu": batch_size_per_gpu,
        "dataset_size": dataset_size,
        "iterations_per_epoch": dataset_size / batch,  # BYOL's epoch: images / batch, fractional
        "total_iterations": total,
        "warmup_iterations": warmup,
        "iterations": torch.tensor(steps),
        "lr": torch.tensor([byol_learning_rate(s, batch, base_lr, total, warmup) for s in steps], dtype=torch.float64),
        "weight_decay": torch.full((len(steps),), weight_decay, dtype=torch.float64),
        "teacher_momentum": torch.tensor([byol_target_ema(s, base_ema, total) for s in steps], dtype=torch.float64),
    }
