"""SOC's mask-feature FPN: the coarsest encoder memory map, refined top-down with finer skips."""

from __future__ import annotations

import torch.nn.functional as F
from fvcore.nn import weight_init
from torch import Tensor, nn

from detectron2.layers import Conv2d

__all__ = ["SpatialDecoder"]

GN_GROUPS = 8  # GroupNorm groups (fewer where a level has fewer channels)


def _conv_gn_relu(in_channels: int, out_channels: int) -> Conv2d:
    norm = nn.GroupNorm(min(GN_GROUPS, out_channels), out_channels)
    return Conv2d(in_channels, out_channels, 3, padding=1, norm=norm, activation=F.relu)


class SpatialDecoder(nn.Module):
    """FPN whose width halves at every step (the MTTR-style decoder SOC uses).

    Two 3x3 conv + GN + ReLU blocks (C -> C -> C/2) on the coarsest map; then, for each skip
    map (coarse to fine), a 1x1 adapter to the current width is added to the nearest-upsampled
    result and a 3x3 conv + GN + ReLU halves the width; a last 3x3 conv gives `out_dim`
    channels at the finest skip's resolution.
    """

    def __init__(self, dim: int, skip_channels: list[int], out_dim: int):
        super().__init__()
        widths = [dim // 2 ** (i + 1) for i in range(len(skip_channels) + 1)]
        if widths[-1] < 1:
            raise ValueError(
                f"SpatialDecoder: width {dim} too small for {len(skip_channels)} skips"
            )
        self.stem = nn.Sequential(_conv_gn_relu(dim, dim), _conv_gn_relu(dim, widths[0]))
        self.adapters = nn.ModuleList(Conv2d(c, w, 1) for c, w in zip(skip_channels, widths[:-1]))
        self.blocks = nn.ModuleList(
            _conv_gn_relu(w, w_next) for w, w_next in zip(widths[:-1], widths[1:])
        )
        self.out = Conv2d(widths[-1], out_dim, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                weight_init.c2_xavier_fill(m)

    def forward(self, x: Tensor, skips: list[Tensor]) -> Tensor:
        """x: F x dim x h x w (coarsest); skips: coarse-to-fine F x Ci x hi x wi maps
        -> F x out_dim x h_last x w_last."""
        if len(skips) != len(self.adapters):
            raise ValueError(f"SpatialDecoder expects {len(self.adapters)} skips, got {len(skips)}")
        x = self.stem(x)
        for adapter, block, skip in zip(self.adapters, self.blocks, skips):
            skip = adapter(skip)
            x = block(skip + F.interpolate(x, size=skip.shape[-2:], mode="nearest"))
        return self.out(x)
