"""BYOL regression loss (Grill et al. 2020, Eq. 2).

``L = ||p/||p|| - z/||z|| ||^2 = 2 - 2 cos(p, z)`` between the online prediction p and the
target projection z, averaged over the batch. The symmetrised loss of the paper (Eq. 4) is
the sum of this loss with the two views swapped, built by the method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def byol_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of ``2 - 2 cos(p, z)``, in [0, 4].

    Args:
        predictions: (B, D) online network predictions q(g(f(v))).
        targets: (B, D) target network projections of the other view. The caller passes
            them detached (stop-gradient: the target network is updated by EMA only).

    Returns:
        Scalar float32 loss.
    """
    if predictions.ndim != 2 or predictions.shape != targets.shape:
        raise ValueError(
            "predictions and targets must both be (B, D), got "
            f"{tuple(predictions.shape)} and {tuple(targets.shape)}"
        )
    with torch.autocast(device_type=predictions.device.type, enabled=False):
        p = F.normalize(predictions.float(), dim=-1)
        z = F.normalize(targets.float(), dim=-1)
        return (2.0 - 2.0 * (p * z).sum(dim=-1)).mean()
