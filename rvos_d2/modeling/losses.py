"""Mask and classification losses, and their pairwise forms used as matching costs.

Mask losses take logits and targets flattened per instance sequence (`S x P`, P = T*h*w), so
that they are computed spatio-temporally over a whole clip. Targets may be soft (in [0, 1]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

FOCAL_ALPHA = 0.25  # weight of the positive class in every sigmoid focal loss
FOCAL_GAMMA = 2.0  # focusing exponent of every sigmoid focal loss


def focal_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Element-wise sigmoid focal loss (alpha 0.25, gamma 2), same shape as `logits`."""
    return sigmoid_focal_loss(
        logits, targets.to(logits.dtype), alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA, reduction="none"
    )


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of each row: `S x P` logits and targets -> `S` losses (smoothed by +1)."""
    probs = logits.sigmoid().flatten(1)
    targets = targets.to(probs.dtype).flatten(1)
    numerator = 2 * (probs * targets).sum(1) + 1
    denominator = probs.sum(1) + targets.sum(1) + 1
    return 1 - numerator / denominator


def mask_focal_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sigmoid focal loss averaged over the pixels of each row: `S x P` -> `S` (0 if P = 0)."""
    logits = logits.flatten(1)
    return focal_loss(logits, targets.flatten(1)).sum(1) / max(logits.shape[1], 1)


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss between every prediction row (`N x P`) and every target row (`M x P`): `N x M`."""
    probs = logits.sigmoid().flatten(1)
    targets = targets.to(probs.dtype).flatten(1)
    numerator = 2 * probs @ targets.T + 1
    denominator = probs.sum(1)[:, None] + targets.sum(1)[None, :] + 1
    return 1 - numerator / denominator


def pairwise_mask_focal_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pixel-averaged focal loss between every prediction (`N x P`) and target (`M x P`): `N x M`.

    The focal loss is linear in the target, so it is split into its target-1 and target-0 parts
    and combined with one matrix product instead of materialising `N x M x P`.
    """
    logits = logits.flatten(1)
    targets = targets.to(logits.dtype).flatten(1)
    pos = focal_loss(logits, torch.ones_like(logits))
    neg = focal_loss(logits, torch.zeros_like(logits))
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def pairwise_class_cost(logits: torch.Tensor) -> torch.Tensor:
    """Focal cost of labelling each logit "referred" rather than "not referred" (same shape).

    Negative when the logit is confidently positive, so better-scored queries cost less.
    """
    positive = focal_loss(logits, torch.ones_like(logits))
    return positive - focal_loss(logits, torch.zeros_like(logits))


def downsample_masks(masks: torch.Tensor, stride: int) -> torch.Tensor:
    """Area-averages `... x H x W` masks by `stride` into soft targets of ceil(H / stride) x
    ceil(W / stride): a size that is not a multiple of the stride is zero-padded at the bottom
    and right first, as a backbone's stride-`stride` map covers the input."""
    pad_h, pad_w = -masks.shape[-2] % stride, -masks.shape[-1] % stride
    if pad_h or pad_w:
        masks = F.pad(masks, (0, pad_w, 0, pad_h))
    lead = masks.shape[:-2]
    pooled = F.avg_pool2d(masks.reshape(-1, 1, *masks.shape[-2:]).float(), stride)
    return pooled.reshape(*lead, *pooled.shape[-2:])
