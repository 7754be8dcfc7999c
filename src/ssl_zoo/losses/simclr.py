"""NT-Xent, SimCLR's contrastive loss (Chen et al. 2020, arXiv:2002.05709, Eq. 1 and Alg. 1).

For N images, two views each, the 2N projections are L2-normalised; each one (the anchor)
must pick the other view of its image (the positive) among the 2N - 1 other projections:

    l(i, j) = -log( exp(sim(z_i, z_j) / T) / sum_{k != i} exp(sim(z_i, z_k) / T) )

and the loss is the mean of l over all 2N anchors (both orders of every pair).

Across processes the negatives are the whole global batch: each process gathers every
process's projections *with their gradients* (the backward sums each row's gradient over
the processes whose anchors used it), so that DDP's average of the per-process gradients
is the gradient of one process on the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_zoo.parallel import collectives


def gather_with_grad(tensor: Tensor) -> Tensor:
    """(W*n, ...) every process's ``tensor`` (n rows each, the same n on every process),
    concatenated in rank order; differentiable: the backward reduce-scatters (sums) the
    gradient, so each process gets the gradient of every process's loss with respect to its
    own rows. Every process must run the backward, as under DDP. The identity without a
    process group.

    Kept here rather than in ``ssl_zoo.parallel.collectives`` only so that SimCLR stays
    within its own files; it belongs there."""
    if not collectives.is_distributed():
        return tensor
    import torch.distributed as dist
    from torch.distributed import _functional_collectives as funcol

    gathered = funcol.all_gather_single_autograd(tensor.contiguous(), 0, dist.group.WORLD)
    return funcol.wait_tensor(gathered)  # may be an async handle: callers get a plain tensor


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """Mean NT-Xent over this process's 2B anchors, with the global batch as negatives.

    Args:
        z1: (B, D) projections of the first view of this process's B images.
        z2: (B, D) projections of the second view; row i is the same image as ``z1``'s row i.
            Every process must hold the same B (the training loader drops the last batch).
        temperature: T of the softmax over cosine similarities, > 0 (paper: 0.1 for
            ImageNet at batch 4096; 0.5 for CIFAR-10, appendix B.9).

    Returns:
        Scalar float32 loss. Under W processes the mean over processes of this value is
        NT-Xent of the global batch of W*B images.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (B, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b = z1.shape[0]
    # fp32: logits of cosine / 0.1 lose ~0.04 in bf16, and the log-sum-exp runs over 2WB terms.
    with torch.autocast(device_type=z1.device.type, enabled=False):
        local = F.normalize(torch.cat([z1, z2]).float(), dim=-1)  # (2B, D): [view 1; view 2]
        candidates = gather_with_grad(local)  # (W*2B, D): process r's rows at [2B*r, 2B*(r+1))
        logits = local @ candidates.T / temperature  # (2B, W*2B)
        rows = torch.arange(2 * b, device=local.device)
        offset = 2 * b * collectives.rank()  # this process's first column in the gathered matrix
        own = offset + rows  # each anchor's own column
        positive = offset + (rows + b) % (2 * b)  # the other view of the same image
        # An anchor is not its own negative: its column drops out of the softmax.
        logits = logits.masked_fill(F.one_hot(own, candidates.shape[0]).bool(), float("-inf"))
        return F.cross_entropy(logits, positive)
