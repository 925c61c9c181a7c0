"""Projects backbone maps to the transformer width and adds coarser levels by striding."""

from __future__ import annotations

import torch
from torch import nn


def _conv_gn(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.GroupNorm(32, out_channels))


class MultiScaleProjection(nn.Module):
    """1x1 conv + GroupNorm per backbone level; each extra level is a stride-2 3x3 conv + GN
    of the previous (coarsest) one, as in Deformable DETR."""

    def __init__(self, in_channels: list[int], out_channels: int, num_levels: int):
        super().__init__()
        if num_levels < len(in_channels):
            raise ValueError(
                f"MultiScaleProjection: {len(in_channels)} backbone levels for {num_levels} levels"
            )
        if out_channels % 32:
            raise ValueError(f"hidden width {out_channels} must be divisible by 32 (GroupNorm)")
        self.lateral = nn.ModuleList(_conv_gn(c, out_channels, 1, 1) for c in in_channels)
        extra_in = [in_channels[-1]] + [out_channels] * (num_levels - len(in_channels) - 1)
        self.extra = nn.ModuleList(
            _conv_gn(c, out_channels, 3, 2) for c in extra_in[: num_levels - len(in_channels)]
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Fine-to-coarse backbone maps -> `num_levels` fine-to-coarse maps of `out_channels`."""
        outputs = [proj(x) for proj, x in zip(self.lateral, features)]
        x = features[-1]
        for proj in self.extra:
            x = proj(x)
            outputs.append(x)
        return outputs
