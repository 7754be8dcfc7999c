"""Collapse signals of a self-supervised run, from tensors a training step already has.

Plain torch, no state, no host sync: every function returns a 0-dim float32 tensor on the
input's device, so a caller can compute several and read them with one transfer.

Representation (any method), from backbone features ``(N, D)``:

- :func:`embedding_std`: per-dimension std over the batch of the L2-normalised features,
  averaged over dimensions (0 when every sample maps to the same direction; about
  ``1/sqrt(D)`` when the directions spread evenly over the sphere).
- :func:`rankme`: effective rank, exp of the entropy of the normalised singular values
  (Garrido et al. 2023, "RankMe", arXiv:2210.02885, Eq. 1); 1 for collapsed features, at
  most ``min(N, D)``.

Teacher targets of the DINO family, from probabilities ``(N, K)`` (rows sum to 1):

- :func:`mean_entropy`: mean per-sample entropy; ``ln K`` when the teacher is uniform
  (the DINO loss then sits at ``ln K``: uniform collapse).
- :func:`kl_to_uniform`: ``KL(mean p || uniform) = ln K - H(mean p)``; ``ln K`` when one
  prototype takes all the mass (sharp collapse), 0 when the batch uses every prototype
  equally. A batch of N sharp but distinct targets cannot go below ``ln K - ln N``.
- :func:`prototype_usage`: fraction of the K prototypes that are some sample's argmax;
  ``1/K`` in a sharp collapse, at most ``min(N, K) / K``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_2d(x: Tensor, name: str) -> None:
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must be (N, D) with N >= 1, got shape {tuple(x.shape)}")


@torch.no_grad()
def embedding_std(features: Tensor) -> Tensor:
    """Args: features (N, D), any scale. Returns the mean over the D dimensions of the
    (population) std over the N samples of ``features / ||features||``."""
    _check_2d(features, "features")
    z = F.normalize(features.float(), dim=1)
    return z.std(dim=0, correction=0).mean()


@torch.no_grad()
def rankme(features: Tensor, eps: float = 1e-7) -> Tensor:
    """Args: features (N, D), not centred (as in the paper). ``eps`` (the paper's) keeps
    ``p log p`` finite for zero singular values. Returns ``exp(-sum_k p_k log p_k)`` with
    ``p_k = sigma_k / sum(sigma) + eps`` over the ``min(N, D)`` singular values."""
    _check_2d(features, "features")
    sigma = torch.linalg.svdvals(features.float())
    # All-zero features (sum 0) count as collapsed (rank 1), not as NaN.
    p = sigma / sigma.sum().clamp_min(torch.finfo(torch.float32).tiny) + eps
    return torch.exp(-(p * torch.log(p)).sum())


def _entropy(probs: Tensor) -> Tensor:
    """(..., K) -> (...) entropy in nats; 0 log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


@torch.no_grad()
def mean_entropy(probs: Tensor) -> Tensor:
    """Args: probs (N, K), rows sum to 1. Returns the mean over rows of ``H(p_n)`` (nats)."""
    _check_2d(probs, "probs")
    return _entropy(probs.float()).mean()


@torch.no_grad()
def kl_to_uniform(probs: Tensor) -> Tensor:
    """Args: probs (N, K), rows sum to 1. Returns ``ln K - H(mean_n p_n)`` (nats)."""
    _check_2d(probs, "probs")
    return math.log(probs.shape[1]) - _entropy(probs.float().mean(dim=0))


@torch.no_grad()
def prototype_usage(probs: Tensor) -> Tensor:
    """Args: probs (N, K). Returns (number of distinct row argmaxes) / K."""
    _check_2d(probs, "probs")
    # index_fill rather than unique/bincount: those size their output from the data,
    # which needs a host sync on GPU.
    used = torch.zeros(probs.shape[1], dtype=torch.bool, device=probs.device)
    used.index_fill_(0, probs.argmax(dim=1), True)
    return used.float().mean()
