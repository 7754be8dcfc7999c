"""Weighted k-nearest-neighbour classification (Wu et al. 2018; DINO's protocol).

Features are L2-normalised; each of the k nearest memory-bank samples votes for its class
with weight exp(cos / T). DINO evaluates with k=20, T=0.07 (Caron et al. 2021, sec. 4.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_class_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores of weighted kNN voting.

    Args:
        train_features: (N, D) memory bank features (any scale; normalised here).
        train_labels: (N,) int64 labels in [0, num_classes).
        query_features: (Q, D) features to classify.
        num_classes: C.
        k: neighbours per query (clipped to N).
        temperature: T of the exp(cos / T) vote weight.
        chunk_size: queries per similarity block, bounding memory to chunk_size x N.

    Returns:
        (Q, C) float32 scores; argmax is the prediction.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    bank = F.normalize(train_features.float(), dim=1)
    queries = F.normalize(query_features.float(), dim=1)
    k = min(k, bank.shape[0])
    scores = []
    for start in range(0, queries.shape[0], chunk_size):
        sims = queries[start : start + chunk_size] @ bank.T
        top_sims, top_idx = sims.topk(k, dim=1)
        weights = (top_sims / temperature).exp()
        votes = torch.zeros(top_idx.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores)
