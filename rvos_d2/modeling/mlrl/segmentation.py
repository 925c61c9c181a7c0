"""MLRL's decoders (Sec. 3.1, 3.3): the pyramid decoder shared by the boundary, segmentation and
object heads, boundary-aware segmentation (Eq. 12-13) and the per-frame confidence head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BoundaryAwareSegmentation", "ConfidenceHead", "PyramidDecoder", "PyramidHead"]


def _conv_gn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution, GroupNorm(8), ReLU: the mapping block of the pyramid decoders."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(8, out_channels),
        nn.ReLU(inplace=True),
    )


class PyramidDecoder(nn.Module):
    """Coarse-to-fine decoder (FPN-like, URVOS's pyramid decoder): the input map is joined with
    the coarsest backbone level, then upsampled bilinearly to each finer level and joined with
    it, every join a 3x3 conv-GroupNorm(8)-ReLU over the concatenation. Returns `dim` channels
    at the finest level's resolution."""

    def __init__(self, in_channels: int, level_channels: list[int], dim: int):
        """level_channels: channels of the backbone levels, coarsest first (res5 .. res2)."""
        super().__init__()
        if dim % 8:
            raise ValueError(f"MODEL.MLRL.DECODER_DIM must be a multiple of 8, got {dim}")
        widths = [in_channels] + [dim] * (len(level_channels) - 1)
        self.blocks = nn.ModuleList(
            _conv_gn_relu(width + level, dim) for width, level in zip(widths, level_channels)
        )

    def forward(self, x: Tensor, levels: list[Tensor]) -> Tensor:
        """x: N x C x h x w at the coarsest level's size; levels: backbone maps, coarsest first."""
        for block, level in zip(self.blocks, levels):
            if x.shape[-2:] != level.shape[-2:]:
                x = F.interpolate(x, size=level.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, level], dim=1))
        return x


class PyramidHead(nn.Module):
    """A pyramid decoder and a 3x3 convolution to one channel of logits: the object level's
    segmentation decoder F_dec (Eq. 6) and the boundary head F_bdry (Eq. 12)."""

    def __init__(self, in_channels: int, level_channels: list[int], dim: int):
        super().__init__()
        self.decoder = PyramidDecoder(in_channels, level_channels, dim)
        self.predictor = nn.Conv2d(dim, 1, 3, padding=1)

    def forward(self, x: Tensor, levels: list[Tensor]) -> Tensor:
        """-> N x h x w logits at the finest level's resolution."""
        return self.predictor(self.decoder(x, levels))[:, 0]


class BoundaryAwareSegmentation(nn.Module):
    """Boundary head B = F_bdry(M, F) and segmentation head F_seg(M, F), two pyramid decoders;
    the mask E = F_cnn(B, F_seg(...)) is a 3x3 convolution over the boundary logits concatenated
    with the segmentation head's features (Eq. 12-13)."""

    def __init__(self, in_channels: int, level_channels: list[int], dim: int):
        super().__init__()
        self.boundary_head = PyramidHead(in_channels, level_channels, dim)
        self.segmentation_head = PyramidDecoder(in_channels, level_channels, dim)
        self.fuse = nn.Conv2d(dim + 1, 1, 3, padding=1)

    def forward(self, x: Tensor, levels: list[Tensor]) -> tuple[Tensor, Tensor]:
        """-> (mask logits E, boundary logits B), both N x h x w at the finest level."""
        boundary = self.boundary_head(x, levels)
        features = self.segmentation_head(x, levels)
        mask = self.fuse(torch.cat([boundary[:, None], features], dim=1))[:, 0]
        return mask, boundary


class ConfidenceHead(nn.Module):
    """F_conf: average of each frame's target-aware features over its unpadded pixels, then
    three fully-connected (1x1 convolution) layers to one logit per frame, trained towards the
    IoU of the frame's predicted mask."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_channels, dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, 1),
        )

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        """x: N x C x h x w; padding: N x h x w bool (True = padding) -> N logits."""
        valid = (~padding).unsqueeze(1).to(x.dtype)
        pooled = (x * valid).sum((2, 3)) / valid.sum((2, 3)).clamp(min=1)
        return self.layers(pooled)[:, 0]
