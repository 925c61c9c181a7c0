"""Stride-s mask targets by point sampling: the pixel at offset s // 2 of every s x s cell.

The published ReferFormer criterion and matcher take their stride-4 targets this way
(`masks[..., 2::4, 2::4]` of the padded frame) instead of averaging each cell's area.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from detectron2.structures import Instances

__all__ = ["point_sample_masks", "point_sampled_targets"]


def point_sample_masks(masks: torch.Tensor, stride: int) -> torch.Tensor:
    """`... x H x W` masks -> `... x ceil(H / s) x ceil(W / s)`: the value at (s//2 + s*i,
    s//2 + s*j); a size that is not a multiple of s is zero-padded at the bottom and right."""
    if stride < 1:
        raise ValueError(f"point_sample_masks: stride must be >= 1, got {stride}")
    pad_h, pad_w = -masks.shape[-2] % stride, -masks.shape[-1] % stride
    if pad_h or pad_w:
        masks = F.pad(masks, (0, pad_w, 0, pad_h))
    start = stride // 2
    return masks[..., start::stride, start::stride]


def point_sampled_targets(
    frames: Sequence[Instances], padded_size: tuple[int, int], stride: int, device: torch.device
) -> torch.Tensor:
    """1 x T x h x w point-sampled targets of one video's per-frame `gt_masks`, each frame
    pasted at the top left of the padded input size."""
    masks = torch.zeros(len(frames), *padded_size, device=device)
    for t, inst in enumerate(frames):
        h, w = inst.image_size
        masks[t, :h, :w] = inst.gt_masks.tensor[0].to(device)
    return point_sample_masks(masks, stride)[None]
