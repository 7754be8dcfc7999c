"""Linear probe and few-shot classification on frozen (cached) features.

Linear probe: a softmax classifier on standardised features (mean and std of the
training part), SGD with momentum 0.9 and a cosine lr, for every (lr, weight decay) of a
small grid at once (one batched weight tensor, so the sweep costs about one run). The
choice is the grid point with the best top-1 on a held-out part of the training split;
the chosen point is then trained on the whole training split and scored on val. This is
the frozen-feature variant of the DINO / DINOv2 linear evaluation (they train on
augmented crops through the backbone; here the features are extracted once, without
augmentation, which is what makes a sweep cheap enough for a CPU).

Few-shot: N labeled images per class drawn at random (one draw per seed) and a
nearest-class-mean classifier on centred, L2-normalised features (SimpleShot's "CL2N",
Wang et al. 2019): no hyperparameter to tune on a handful of labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy


def accuracies(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float | None]:
    """top-1 and top-5 (None with 5 classes or fewer: it would be trivially high)."""
    out: dict[str, float | None] = {}
    for k in (1, 5):
        if k == 1 or num_classes > k:
            metric = MulticlassAccuracy(num_classes, top_k=k, average="micro")
            out[f"top{k}"] = float(metric(scores.float(), labels))
        else:
            out[f"top{k}"] = None
    return out


@dataclass
class ProbeResult:
    scores: torch.Tensor  # (Q, C) val logits of the chosen classifier
    lr: float
    weight_decay: float
    heldout_top1: dict[tuple[float, float], float]  # every grid point's held-out top-1


def _standardise(fit: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = fit.mean(0), fit.std(0).clamp_min(1e-6)
    return [(x - mean) / std for x in (fit, *others)]


def train_linear_grid(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    lrs: torch.Tensor,
    weight_decays: torch.Tensor,
    epochs: int,
    batch_size: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (G, D, C), b (G, C)): G = len(lrs) = len(weight_decays) independent softmax
    classifiers trained on the same batches; grid point g uses lrs[g], weight_decays[g]."""
    grid, dim = lrs.shape[0], x.shape[1]
    weight = torch.zeros(grid, dim, num_classes, requires_grad=True)
    bias = torch.zeros(grid, num_classes, requires_grad=True)
    velocity = [torch.zeros_like(weight), torch.zeros_like(bias)]
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    total, step = epochs * steps_per_epoch, 0
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch_size):
            idx = order[start : start + batch_size]
            logits = torch.einsum("nd,gdc->gnc", x[idx], weight) + bias[:, None]
            # Summing the per-grid-point mean losses keeps every point's gradient its own.
            loss = F.cross_entropy(logits.reshape(-1, num_classes), y[idx].repeat(grid), reduction="none")
            loss.view(grid, -1).mean(1).sum().backward()
            lr = lrs * 0.5 * (1 + math.cos(math.pi * step / total))
            with torch.no_grad():
                for param, vel, decay in ((weight, velocity[0], True), (bias, velocity[1], False)):
                    shape = (grid,) + (1,) * (param.dim() - 1)
                    grad = param.grad + (weight_decays.view(shape) * param if decay else 0)
                    vel.mul_(0.9).add_(grad)
                    param.sub_(lr.view(shape) * vel)
                    param.grad = None
            step += 1
    return weight.detach(), bias.detach()


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    num_classes: int,
    lrs: list[float],
    weight_decays: list[float],
    epochs: int = 100,
    batch_size: int = 256,
    heldout_fraction: float = 0.2,
    seed: int = 0,
) -> ProbeResult:
    """Sweep (lr, weight decay) on a held-out part of train, retrain the best on all of it."""
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"linear.heldout_fraction must be in (0, 1), got {heldout_fraction}")
    n_heldout = round(train_x.shape[0] * heldout_fraction)
    if n_heldout < 1 or n_heldout >= train_x.shape[0]:
        raise ValueError(
            f"linear.heldout_fraction={heldout_fraction} of {train_x.shape[0]} training images leaves "
            "no held-out or no fitting image: use more data or another fraction"
        )
    order = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(seed))
    fit_idx, heldout_idx = order[n_heldout:], order[:n_heldout]
    grid = [(lr, wd) for lr in lrs for wd in weight_decays]
    lr_t = torch.tensor([g[0] for g in grid], dtype=torch.float32)
    wd_t = torch.tensor([g[1] for g in grid], dtype=torch.float32)
    fit_x, heldout_x = _standardise(train_x[fit_idx], train_x[heldout_idx])
    weight, bias = train_linear_grid(fit_x, train_y[fit_idx], num_classes, lr_t, wd_t, epochs, batch_size, seed)
    heldout_pred = (torch.einsum("nd,gdc->gnc", heldout_x, weight) + bias[:, None]).argmax(-1)
    heldout_top1 = (heldout_pred == train_y[heldout_idx]).float().mean(1)
    best = int(heldout_top1.argmax())  # ties: the first, i.e. the smallest lr and decay
    all_x, val_xs = _standardise(train_x, val_x)
    weight, bias = train_linear_grid(
        all_x, train_y, num_classes, lr_t[best : best + 1], wd_t[best : best + 1], epochs, batch_size, seed
    )
    scores = val_xs @ weight[0] + bias[0]
    return ProbeResult(scores, grid[best][0], grid[best][1], {g: float(a) for g, a in zip(grid, heldout_top1)})


def sample_shots(labels: torch.Tensor, shots: int, num_classes: int, seed: int) -> torch.Tensor:
    """Indices of ``shots`` random images of every class (one draw per seed)."""
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        if members.numel() < shots:
            raise ValueError(
                f"fewshot.shots={shots}: class {c} has only {members.numel()} training image(s); "
                "use fewer shots"
            )
        picked.append(members[torch.randperm(members.numel(), generator=generator)[:shots]])
    return torch.cat(picked)


def nearest_class_mean_scores(
    support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, num_classes: int, center: torch.Tensor
) -> torch.Tensor:
    """(Q, C) cosine similarity of each query to each class mean (CL2N features)."""
    support = F.normalize(support_x - center, dim=1)
    queries = F.normalize(query_x - center, dim=1)
    means = torch.zeros(num_classes, support.shape[1]).index_add_(0, support_y, support)
    return queries @ F.normalize(means, dim=1).T


def few_shot(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    shots: list[int],
    seeds: int = 5,
) -> dict[int, dict[str, float | None]]:
    """{shots: {top1_mean, top1_std, top5_mean, top5_std}} over ``seeds`` draws."""
    if seeds < 1:
        raise ValueError(f"fewshot.seeds must be >= 1, got {seeds}")
    center = train_x.mean(0)  # the unlabeled mean of the whole split: no label leaks
    results = {}
    for n in shots:
        if int(n) != n or n < 1:
            raise ValueError(f"fewshot.shots: every entry must be an int >= 1, got {n!r}")
        runs = []
        for seed in range(seeds):
            idx = sample_shots(train_y, int(n), num_classes, seed)
            scores = nearest_class_mean_scores(train_x[idx], train_y[idx], val_x, num_classes, center)
            runs.append(accuracies(scores, val_y, num_classes))
        row: dict[str, float | None] = {}
        for metric in ("top1", "top5"):
            values = [r[metric] for r in runs if r[metric] is not None]
            if values:
                t = torch.tensor(values)
                row[f"{metric}_mean"] = float(t.mean())
                row[f"{metric}_std"] = float(t.std()) if len(values) > 1 else 0.0
            else:
                row[f"{metric}_mean"] = row[f"{metric}_std"] = None
        results[int(n)] = row
    return results
