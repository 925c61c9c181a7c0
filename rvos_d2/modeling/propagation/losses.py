"""STCN's bootstrapped cross-entropy: plain CE first, then only the hardest pixels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def bootstrap_fraction(iteration: int, start_warm: int, end_warm: int, top_p: float) -> float:
    """Fraction of pixels kept: 1 before `start_warm`, falling linearly to `top_p` at
    `end_warm`, then `top_p`."""
    if iteration < start_warm:
        return 1.0
    if iteration >= end_warm:
        return top_p
    return top_p + (1 - top_p) * (end_warm - iteration) / (end_warm - start_warm)


def bootstrapped_cross_entropy(logits: Tensor, labels: Tensor, fraction: float) -> Tensor:
    """Mean cross-entropy of the `fraction` of pixels with the largest loss.

    logits (C, H, W) over background + objects, labels (H, W) in [0, C).
    """
    loss = F.cross_entropy(logits.unsqueeze(0), labels.unsqueeze(0), reduction="none").flatten()
    if fraction >= 1:
        return loss.mean()
    return loss.topk(max(int(loss.numel() * fraction), 1), sorted=False).values.mean()
