"""Sine positional encoding of 2-D feature maps (the fixed encoding of DETR-style models)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """Encodes each pixel's (y, x) position with sines and cosines of geometric frequencies.

    With `normalize`, positions are measured over the valid (unpadded) part of each image and
    scaled to [0, scale], so the encoding does not depend on how much padding a batch adds.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: int = 10000,
        normalize: bool = True,
        scale: float = 2 * math.pi,
    ):
        super().__init__()
        if num_pos_feats % 2 != 0:
            raise ValueError(
                f"PositionEmbeddingSine: num_pos_feats must be even, got {num_pos_feats}"
            )
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: N x C x H x W (only its size and device are used); mask: N x H x W, True = padding.

        Returns N x 2*num_pos_feats x H x W: the y encoding, then the x encoding.
        """
        n, _, h, w = x.shape
        if mask is None:
            valid = torch.ones(n, h, w, dtype=torch.bool, device=x.device)
        else:
            if mask.shape != (n, h, w):
                raise ValueError(
                    f"PositionEmbeddingSine: mask must be {n} x {h} x {w}, got {tuple(mask.shape)}"
                )
            valid = ~mask
        y = valid.cumsum(1, dtype=torch.float32)
        x_pos = valid.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            # Pixel centres: the first valid pixel sits at 0.5 / count, the last just below scale.
            y = (y - 0.5) / (y[:, -1:, :] + eps) * self.scale
            x_pos = (x_pos - 0.5) / (x_pos[:, :, -1:] + eps) * self.scale
        pair = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device) // 2
        freqs = self.temperature ** (2 * pair / self.num_pos_feats)
        encodings = []
        for coord in (y, x_pos):
            angles = coord[..., None] / freqs
            # Even channels take the sine, odd channels the cosine of the same frequency.
            encodings.append(
                torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], dim=4).flatten(3)
            )
        return torch.cat(encodings, dim=3).permute(0, 3, 1, 2).to(x.dtype)
