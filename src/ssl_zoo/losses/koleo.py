"""KoLeo regulariser (Sablayrolles et al. 2019, "Spreading vectors for similarity search",
Eq. 5; used on the CLS features by DINOv2, Oquab et al. 2023, Sec. 4).

``L = -(1/B) sum_i log(d_i)`` with ``d_i`` the distance from the L2-normalised feature i to
its nearest neighbour in the batch: minimising it spreads the features uniformly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """Kozachenko-Leonenko entropy estimator loss on a batch of features.

    The nearest neighbour is found by maximum inner product of the normalised rows (same
    ordering as distance, one matmul). The distance is ``||x_i - x_nn + eps||`` and the log
    takes ``d + eps``, as in DINOv2's ``nn.PairwiseDistance(2, eps)``; both keep the loss and
    its gradient finite when two rows are identical (d = 0). The loss is local to the batch
    of this process (no all-gather), as in DINOv2.

    Args:
        features: (B, D) features (e.g. backbone CLS of one view), B >= 2.
        eps: > 0, used for the normalisation, the distance and the log.

    Returns:
        Scalar float32 loss.
    """
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (B, D) with B >= 2, got {tuple(features.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    with torch.autocast(device_type=features.device.type, enabled=False):
        x = F.normalize(features.float(), p=2, dim=-1, eps=eps)
        with torch.no_grad():
            # The neighbour index is a discrete choice: no gradient flows through it.
            dots = x @ x.t()
            dots.fill_diagonal_(float("-inf"))  # a row is not its own neighbour
            nn_index = dots.argmax(dim=1)
        distances = torch.linalg.vector_norm(x - x[nn_index] + eps, dim=-1)
        return -torch.log(distances + eps).mean()
