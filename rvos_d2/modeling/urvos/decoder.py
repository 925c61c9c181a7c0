"""URVOS's decoder (Fig. 4): a feature pyramid over Res5..Res2 with residual blocks that takes
the cross-modal attentive map in its first layer and the memory attentive map in its second,
a balanced self-attention refinement of all levels (as BFPN) and a semantic-FPN mask head that
predicts mask logits at the finest level's stride (1/4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.layers import Conv2d, get_norm

__all__ = ["BalancedRefinement", "MaskHead", "PyramidDecoder", "PyramidLayer", "ResBlock"]


class ResBlock(nn.Module):
    """Pre-activation residual block of two 3x3 convs."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class PyramidLayer(nn.Module):
    """One pyramid level: the level's visual map (3x3 conv + ResBlock) plus the upsampled
    previous level's output and an optional extra map (an attentive map projected by a 3x3 conv
    + ResBlock), merged by a ResBlock."""

    def __init__(self, in_channels: int, dim: int, extra_channels: int = 0):
        super().__init__()
        self.visual = nn.Sequential(nn.Conv2d(in_channels, dim, 3, padding=1), ResBlock(dim))
        self.extra = (
            nn.Sequential(nn.Conv2d(extra_channels, dim, 3, padding=1), ResBlock(dim))
            if extra_channels
            else None
        )
        self.merge = ResBlock(dim)

    def forward(self, x: Tensor, previous: Tensor | None, extra: Tensor | None) -> Tensor:
        out = self.visual(x)
        if previous is not None:
            out = out + F.interpolate(previous, size=out.shape[-2:], mode="nearest")
        if (extra is None) != (self.extra is None):
            raise ValueError("PyramidLayer: an extra map is needed exactly when built with one")
        if extra is not None:
            out = out + self.extra(extra)
        return self.merge(out)


class BalancedRefinement(nn.Module):
    """BFPN's balanced refinement: all levels resized to the reference level's size and
    averaged, refined by a non-local (embedded Gaussian) block, resized back and added to
    each level (identity connection)."""

    def __init__(self, dim: int, reference: int):
        super().__init__()
        self.reference = reference  # index of the level whose size the levels are averaged at
        inner = max(dim // 2, 1)
        self.theta, self.phi, self.g = (nn.Conv2d(dim, inner, 1) for _ in range(3))
        self.out = nn.Conv2d(inner, dim, 1)

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        size = levels[self.reference].shape[-2:]
        mean = torch.stack(
            [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in levels]
        ).mean(0)
        n, _, h, w = mean.shape
        theta = self.theta(mean).flatten(2).transpose(1, 2)  # N x hw x inner
        phi, g = self.phi(mean).flatten(2), self.g(mean).flatten(2).transpose(1, 2)
        attended = (theta @ phi).softmax(-1) @ g  # N x hw x inner
        refined = mean + self.out(attended.transpose(1, 2).reshape(n, -1, h, w))
        return [
            x + F.interpolate(refined, size=x.shape[-2:], mode="bilinear", align_corners=False)
            for x in levels
        ]


class MaskHead(nn.Module):
    """Semantic-FPN head: each level brought to the finest stride by conv-GN-ReLU(-x2 upsample)
    blocks, the levels summed, a 1x1 conv to one mask logit."""

    def __init__(self, dim: int, strides: list[int]):
        super().__init__()
        finest = min(strides)
        norm = "GN" if dim % 32 == 0 else ""
        self.branches = nn.ModuleList()
        for stride in strides:
            ups = int(math.log2(stride // finest))
            blocks = []
            for i in range(max(ups, 1)):
                blocks.append(
                    Conv2d(
                        dim, dim, 3, padding=1, bias=not norm, norm=get_norm(norm, dim),
                        activation=nn.ReLU(inplace=True),
                    )
                )  # fmt: skip
                if i < ups:
                    blocks.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.branches.append(nn.Sequential(*blocks))
        self.predictor = nn.Conv2d(dim, 1, 1)

    def forward(self, levels: list[Tensor]) -> Tensor:
        """Levels coarse to fine -> N x h x w logits at the finest level's size."""
        size = levels[-1].shape[-2:]
        out = 0
        for branch, x in zip(self.branches, levels):
            y = branch(x)
            out = out + (y if y.shape[-2:] == size else F.interpolate(y, size=size))
        return self.predictor(out)[:, 0]


class PyramidDecoder(nn.Module):
    """Res5..Res2 decoded coarse to fine: Res5 with the cross-modal attentive map, Res4 with
    the memory attentive map (when memory attention is used), then Res3 and Res2; balanced
    refinement at the Res4 level's size; mask logits at the Res2 stride."""

    def __init__(
        self,
        in_channels: list[int],
        strides: list[int],
        attention_dim: int,
        dim: int,
        memory: bool = True,
    ):
        """in_channels, strides: of Res5, Res4, Res3, Res2 (coarse to fine)."""
        super().__init__()
        if len(in_channels) != 4 or len(strides) != 4:
            raise ValueError(f"PyramidDecoder needs 4 levels, got channels {in_channels}")
        extras = [attention_dim, attention_dim if memory else 0, 0, 0]
        self.layers = nn.ModuleList(
            PyramidLayer(c, dim, extra) for c, extra in zip(in_channels, extras)
        )
        self.refine = BalancedRefinement(dim, reference=1)
        self.head = MaskHead(dim, strides)
        self.stride = min(strides)

    def forward(self, levels: list[Tensor], cross_modal: Tensor, memory: Tensor | None) -> Tensor:
        """levels: Res5..Res2 maps; cross_modal: N x A x h5 x w5; memory: N x A x h4 x w4 or
        None -> N x h2 x w2 mask logits."""
        outputs, previous = [], None
        for layer, x, extra in zip(self.layers, levels, [cross_modal, memory, None, None]):
            previous = layer(x, previous, extra)
            outputs.append(previous)
        return self.head(self.refine(outputs))
