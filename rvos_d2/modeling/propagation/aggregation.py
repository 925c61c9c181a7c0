"""Soft aggregation of per-object probabilities into one distribution (from STM / STCN)."""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-7  # probabilities are clamped to [EPS, 1 - EPS] before taking logits


def aggregate_logits(probs: Tensor, dim: int = 0) -> Tensor:
    """Per-object probabilities (K along `dim`) -> K+1 logits, background first.

    The background probability is the product of (1 - p_k); each of the K+1 values is clamped
    and turned into its logit log(p / (1 - p)), so that a softmax gives a valid distribution.
    """
    background = torch.prod(1 - probs, dim=dim, keepdim=True)
    p = torch.cat([background, probs], dim=dim).clamp(EPS, 1 - EPS)
    return torch.log(p / (1 - p))


def soft_aggregate(probs: Tensor, dim: int = 0) -> Tensor:
    """Per-object probabilities (K along `dim`) -> distribution over background + K objects."""
    return torch.softmax(aggregate_logits(probs, dim), dim=dim)


def others_sum(masks: Tensor) -> Tensor:
    """For each object k (dim 0), the sum of the other objects' masks (zeros for one object)."""
    if masks.shape[0] == 1:
        return torch.zeros_like(masks)
    index = torch.arange(masks.shape[0], device=masks.device)
    return torch.stack([masks[index != k].sum(0) for k in range(masks.shape[0])])
