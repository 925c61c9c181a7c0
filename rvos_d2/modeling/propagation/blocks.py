"""Building blocks of STCN's value fusion and decoder: residual blocks, CBAM, upsampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ResBlock(nn.Module):
    """Pre-activation residual block of two 3x3 convolutions (3x3 projection if widths differ)."""

    def __init__(self, in_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or in_channels
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 3, padding=1)
            if in_channels != out_channels
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(F.relu(self.conv1(F.relu(x))))
        return (x if self.shortcut is None else self.shortcut(x)) + out


class CBAM(nn.Module):
    """Convolutional block attention: a channel gate (from average and max pooling through a
    shared MLP) followed by a spatial gate (a 7x7 convolution over channel max and mean)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.channel_mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels)
        )
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.channel_mlp(x.mean(dim=(2, 3))) + self.channel_mlp(x.amax(dim=(2, 3)))
        x = x * torch.sigmoid(gate)[:, :, None, None]
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class FeatureFusion(nn.Module):
    """Fuses the value encoder's stride-16 map with the key encoder's (residual + CBAM)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.block1 = ResBlock(in_channels, out_channels)
        self.attention = CBAM(out_channels)
        self.block2 = ResBlock(out_channels)

    def forward(self, value: Tensor, key_features: Tensor) -> Tensor:
        x = self.block1(torch.cat([value, key_features], dim=1))
        return self.block2(x + self.attention(x))


class UpsampleBlock(nn.Module):
    """x2 bilinear upsampling of the coarse map added to a projected skip map, then a ResBlock."""

    def __init__(self, skip_channels: int, up_channels: int, out_channels: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_channels, up_channels, 3, padding=1)
        self.block = ResBlock(up_channels, out_channels)

    def forward(self, skip: Tensor, coarse: Tensor) -> Tensor:
        up = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
        return self.block(self.skip_conv(skip) + up)
