"""Padding masks and mask resizing shared by the meta-architectures and their parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masks_to_original", "padding_mask", "resize_mask"]


def padding_mask(x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """F x H x W bool, True where a frame of the padded batch `x` is beyond its size (F x 2)."""
    ys = torch.arange(x.shape[-2], device=x.device)[None, :, None]
    xs = torch.arange(x.shape[-1], device=x.device)[None, None, :]
    return (ys >= sizes[:, 0, None, None]) | (xs >= sizes[:, 1, None, None])


def resize_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """F x H x W bool mask resized (nearest) to `size`."""
    return F.interpolate(mask[None].float(), size=tuple(size)).bool()[0]


def masks_to_original(logits: torch.Tensor, padded_size, image_size, original_size) -> torch.Tensor:
    """T x h x w low-resolution logits of padded frames -> T x H x W probabilities at the
    original size: upsampled to the padded input, cropped to the image, resized, sigmoid.
    Unpadded frames are resized once, straight to the original size (as ReferFormer does)."""
    if tuple(padded_size) == tuple(image_size):
        up = F.interpolate(logits[:, None], size=tuple(original_size), mode="bilinear")
        return up[:, 0].sigmoid()
    up = F.interpolate(logits[:, None], size=tuple(padded_size), mode="bilinear")
    up = up[..., : image_size[0], : image_size[1]]
    return F.interpolate(up, size=tuple(original_size), mode="bilinear")[:, 0].sigmoid()
