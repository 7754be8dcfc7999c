"""Teacher targets: how the teacher's logits become the distribution the student matches.

Two strategies, chosen by config and shared by the CLS (DINO) and patch (iBOT) heads:

- softmax centering (DINO, Caron et al. 2021, Sec. 3.1): ``softmax((t - c) / T)`` with a
  center ``c`` that tracks the mean teacher logit by EMA, which (with sharpening by a low
  ``T``) avoids collapse;
- Sinkhorn-Knopp (SwAV, Caron et al. 2020, Sec. 3.1 / Alg. 1; DINOv2, Oquab et al. 2023,
  Sec. 4): an equipartition of the batch over the prototypes, no state.

Both expose ``targets(teacher_logits, temperature)`` and ``update(teacher_logits)`` so the
method calls them the same way. The temperature is an argument: its schedule lives in the
method, never here. Everything is computed in float32 with autocast disabled.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssl_zoo.parallel import collectives

TARGET_KINDS = ("centering", "sinkhorn_knopp")


CENTER_REDUCTIONS = ("global_mean", "mean_of_process_means")


def _check_temperature(temperature: float, name: str = "temperature") -> None:
    if not temperature > 0:
        raise ValueError(f"{name} must be > 0, got {temperature}")


def softmax_center(teacher_logits: Tensor, center: Tensor, temperature: float) -> Tensor:
    """Centered and sharpened teacher probabilities ``softmax((t - c) / T)``.

    Args:
        teacher_logits: (N, K) teacher head outputs (any leading dims work: (..., K)).
        center: (1, K) running center (any shape that broadcasts against the logits).
        temperature: teacher temperature T > 0 (DINO: 0.04 -> 0.07).

    Returns:
        (N, K) float32 probabilities, each row sums to 1.
    """
    _check_temperature(temperature)
    if center.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"center has {center.shape[-1]} prototypes, teacher_logits has "
            f"{teacher_logits.shape[-1]}"
        )
    with torch.autocast(device_type=teacher_logits.device.type, enabled=False):
        return torch.softmax((teacher_logits.float() - center.float()) / temperature, dim=-1)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: Tensor, temperature: float, n_iterations: int = 3) -> Tensor:
    """Teacher targets by Sinkhorn-Knopp (SwAV Alg. 1, as used in DINOv2).

    ``Q = exp(t / T)^T`` (K x B) is alternately scaled so that every prototype gets an
    equal share of the batch (rows) and every sample a unit mass (columns). SwAV writes the
    marginals as 1/K and 1/B and starts by dividing by the total sum; those constants are
    uniform scalings that the next normalisation cancels exactly, so they are left out: the
    result is identical and the intermediate values stay far from float32 underflow.

    Under DDP the batch is the global one: the per-prototype sums are all-reduced (the
    per-sample sums are local by construction), so each process gets its own rows of the
    targets that a single process would compute on the concatenated batch. Every process
    must call this (collective).

    ``exp`` is not shifted (a per-rank shift would change the result): logits must satisfy
    ``t / T < 88`` (float32). A weight-normalised DINO head gives cosine logits in [-1, 1].

    Args:
        teacher_logits: (B, K) teacher head outputs (any leading dims: (..., K), every
            leading position is a sample).
        temperature: teacher temperature T > 0.
        n_iterations: number of (row, column) normalisation rounds, >= 1 (DINOv2: 3).

    Returns:
        (B, K) float32 targets, each row sums to 1; the per-prototype sums over the global
        batch approach B/K as ``n_iterations`` grows.
    """
    _check_temperature(temperature)
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")
    if teacher_logits.ndim < 2:
        raise ValueError(f"teacher_logits must be (B, K), got shape {tuple(teacher_logits.shape)}")
    shape = teacher_logits.shape
    with torch.autocast(device_type=teacher_logits.device.type, enabled=False):
        q = torch.exp(teacher_logits.float().reshape(-1, shape[-1]) / temperature).t()  # (K, B)
        for _ in range(n_iterations):
            # Prototype marginal: sums over the global batch.
            q /= collectives.all_reduce_sum(q.sum(dim=1, keepdim=True))
            # Sample marginal: each column (sample) sums to 1; ending here makes rows of the
            # returned targets probability distributions.
            q /= q.sum(dim=0, keepdim=True)
        return q.t().reshape(shape)


class SoftmaxCentering(nn.Module):
    """Softmax centering with an EMA center (DINO Sec. 3.1, Eq. 4).

    ``targets`` uses the current center; ``update`` then moves it toward the batch mean of
    the raw teacher logits: ``c <- m c + (1 - m) mean(t)``. Call ``update`` after computing
    the targets of the step (as the reference implementations do).
    """

    center: Tensor

    def __init__(self, out_dim: int, momentum: float = 0.9, reduction: str = "global_mean") -> None:
        """
        Args:
            out_dim: number of prototypes K.
            momentum: EMA momentum m in [0, 1] (DINO/DINOv2 default 0.9).
            reduction: how the batch mean is taken across processes: ``global_mean`` (over
                every row of every process; DINO and DINOv2's CLS center) or
                ``mean_of_process_means`` (each process's mean over its rows, then the
                mean over processes: DINOv2's iBOT patch center, ibot_patch_loss.py
                ``reduce_center_update`` / ``apply_center_update``). They agree on one
                process and whenever every process holds as many rows.
        """
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim must be >= 1, got {out_dim}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if reduction not in CENTER_REDUCTIONS:
            raise ValueError(f"reduction must be one of {CENTER_REDUCTIONS}, got {reduction!r}")
        self.momentum = momentum
        self.reduction = reduction
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def targets(self, teacher_logits: Tensor, temperature: float) -> Tensor:
        """(..., K) teacher logits -> (..., K) float32 probabilities with the current center."""
        return softmax_center(teacher_logits, self.center, temperature)

    @torch.no_grad()
    def update(self, teacher_logits: Tensor) -> None:
        """EMA of the mean teacher logit.

        Args:
            teacher_logits: (N, K) CLS logits, or patch logits (B, N, K) / (M, K). The mean is
                over all rows of every process (for (B, N, K): over patches then images, as
                all images have N patches); a call with no rows anywhere leaves the center
                as it is. Collective: every process must call it.
        """
        if teacher_logits.shape[-1] != self.center.shape[-1]:
            raise ValueError(
                f"teacher_logits has {teacher_logits.shape[-1]} prototypes, center has "
                f"{self.center.shape[-1]}"
            )
        with torch.autocast(device_type=teacher_logits.device.type, enabled=False):
            flat = teacher_logits.float().reshape(-1, teacher_logits.shape[-1])
            if self.reduction == "global_mean":
                # Sum and count, not a per-process mean: processes may hold different numbers
                # of rows (masked patches), even none, and the center is the mean over all.
                totals = torch.cat((flat.sum(dim=0), flat.new_tensor([flat.shape[0]])))
            else:
                # This process's mean, counted as one; a process without rows adds nothing.
                has_rows = flat.shape[0] > 0
                local_mean = flat.mean(dim=0) if has_rows else flat.new_zeros(flat.shape[-1])
                totals = torch.cat((local_mean, flat.new_tensor([float(has_rows)])))
            totals = collectives.all_reduce_sum(totals)
            # No rows anywhere, or a non-finite teacher output (an overflow that the
            # non-finite guard skips): the center stays as it is, uncorrupted.
            if not bool(torch.isfinite(totals).all() & (totals[-1] > 0)):
                return
            batch_center = (totals[:-1] / totals[-1]).unsqueeze(0)
            self.center.mul_(self.momentum).add_(batch_center, alpha=1.0 - self.momentum)

    def extra_repr(self) -> str:
        return f"out_dim={self.center.shape[-1]}, momentum={self.momentum}, reduction={self.reduction}"


class SinkhornKnoppTargets(nn.Module):
    """Sinkhorn-Knopp targets behind the same interface as ``SoftmaxCentering`` (no state)."""

    def __init__(self, n_iterations: int = 3) -> None:
        """
        Args:
            n_iterations: Sinkhorn-Knopp rounds, >= 1 (DINOv2: 3).
        """
        super().__init__()
        if n_iterations < 1:
            raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")
        self.n_iterations = n_iterations

    @torch.no_grad()
    def targets(self, teacher_logits: Tensor, temperature: float) -> Tensor:
        """(B, K) teacher logits -> (B, K) float32 targets (collective under DDP)."""
        return sinkhorn_knopp(teacher_logits, temperature, self.n_iterations)

    def update(self, teacher_logits: Tensor) -> None:
        """No state to update."""

    def extra_repr(self) -> str:
        return f"n_iterations={self.n_iterations}"


def build_teacher_targets(
    kind: str, out_dim: int, center_momentum: float = 0.9, n_iterations: int = 3, center_reduction: str = "global_mean"
) -> SoftmaxCentering | SinkhornKnoppTargets:
    """Teacher-target strategy by name.

    Args:
        kind: "centering" (DINO) or "sinkhorn_knopp" (DINOv2).
        out_dim: number of prototypes K (used by centering).
        center_momentum: EMA momentum of the center (centering only).
        n_iterations: Sinkhorn-Knopp rounds (sinkhorn_knopp only).
        center_reduction: see :class:`SoftmaxCentering` (centering only).
    """
    if kind == "centering":
        return SoftmaxCentering(out_dim, momentum=center_momentum, reduction=center_reduction)
    if kind == "sinkhorn_knopp":
        return SinkhornKnoppTargets(n_iterations=n_iterations)
    raise ValueError(f"kind must be one of {TARGET_KINDS}, got {kind!r}")
