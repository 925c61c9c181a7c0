"""Cross-modal FPN: a top-down feature pyramid with vision-language fusion at every level."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fvcore.nn import weight_init
from torch import nn

from rvos_d2.modeling.heads.vl_fusion import TextCrossAttention
from rvos_d2.modeling.transformer import PositionEmbeddingSine

from detectron2.layers import Conv2d, get_norm


class CrossModalFPN(nn.Module):
    """Fuses fine-to-coarse maps (backbone stride-4 map, encoder memory at strides 8/16/32) into
    stride-4 mask features.

    At each level: 1x1 lateral conv + GroupNorm, then every position (with its sine position
    encoding) attends to the words
    (TextCrossAttention, added as a residual and LayerNorm-ed), then the upsampled coarser
    output is added and a 3x3 conv + GN + ReLU smooths the sum. A final 3x3 conv projects the
    finest level to `mask_dim` channels.
    """

    def __init__(
        self, in_channels: list[int], conv_dim: int, mask_dim: int, num_heads: int, text_dim: int
    ):
        super().__init__()
        self.position = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.lateral = nn.ModuleList(
            Conv2d(c, conv_dim, 1, bias=False, norm=get_norm("GN", conv_dim)) for c in in_channels
        )
        self.output = nn.ModuleList(
            Conv2d(
                conv_dim,
                conv_dim,
                3,
                padding=1,
                bias=False,
                norm=get_norm("GN", conv_dim),
                activation=F.relu,
            )
            for _ in in_channels
        )
        self.fusion = nn.ModuleList(
            TextCrossAttention(conv_dim, num_heads, text_dim) for _ in in_channels
        )
        self.fusion_norm = nn.ModuleList(nn.LayerNorm(conv_dim) for _ in in_channels)
        self.mask_proj = Conv2d(conv_dim, mask_dim, 3, padding=1)
        for conv in [*self.lateral, *self.output, self.mask_proj]:
            weight_init.c2_xavier_fill(conv)

    def forward(
        self,
        features: list[torch.Tensor],
        masks: list[torch.Tensor],
        words: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> torch.Tensor:
        """features / masks: fine-to-coarse F x Ci x hi x wi maps and their F x hi x wi padding
        masks (True = padding); words F x L x Ct with word_mask F x L (True = padding)
        -> F x mask_dim x h0 x w0."""
        if len(features) != len(self.lateral):
            raise ValueError(
                f"CrossModalFPN expects {len(self.lateral)} levels, got {len(features)}"
            )
        y = None
        for level in reversed(range(len(features))):
            x = self.lateral[level](features[level])
            pos = self.position(x, masks[level])
            x = self._fuse_text(level, x, pos, words, word_mask)
            if y is not None:
                x = x + F.interpolate(y, size=x.shape[-2:], mode="nearest")
            y = self.output[level](x)
        return self.mask_proj(y)

    def _fuse_text(self, level, x, pos, words, word_mask):
        f, c, h, w = x.shape
        flat = x.flatten(2).transpose(1, 2)  # F x hw x C
        attended = self.fusion[level](flat, words, word_mask, pos.flatten(2).transpose(1, 2))
        flat = self.fusion_norm[level](flat + attended)
        return flat.transpose(1, 2).reshape(f, c, h, w)
