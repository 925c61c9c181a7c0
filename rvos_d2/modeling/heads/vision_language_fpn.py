"""Vision-language FPN: a top-down pyramid whose every level is a vision-language block over the
whole clip (the cross-modal FPN of the published ReferFormer).

At each level the positions of all frames of a clip attend to each other (self-attention on a
spatially reduced grid), then to the words of the expression, then pass a feed-forward layer;
the pyramid adds the upsampled coarser level and smooths it with a 3x3 conv, as an FPN does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from fvcore.nn import weight_init
from torch import Tensor, nn

from rvos_d2.modeling.transformer import PositionEmbeddingSine

from detectron2.layers import Conv2d

__all__ = ["VisionLanguageBlock", "VisionLanguageFPN", "sine_text_position"]


def sine_text_position(
    word_mask: Tensor, dim: int, temperature: float = 10000.0, scale: float = 2 * math.pi
) -> Tensor:
    """1-D sine position of every token, B x L x dim, from word_mask B x L (True = padding).

    Token i (1-based count of valid tokens up to it) sits at i / (valid count) * scale; even
    channels hold the sine, odd channels the cosine of the same frequency.
    """
    if dim % 2:
        raise ValueError(f"sine_text_position: dim must be even, got {dim}")
    position = (~word_mask).cumsum(1, dtype=torch.float32)
    position = position / (position[:, -1:] + 1e-6) * scale
    pair = torch.arange(dim, dtype=torch.float32, device=word_mask.device) // 2
    angles = position[..., None] / temperature ** (2 * pair / dim)
    return torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], dim=3).flatten(2)


class VisionLanguageBlock(nn.Module):
    """Post-norm block on the tokens of one clip: self-attention among all T x h x w positions
    (queries, keys and values shrunk by `reduction` with nearest sampling, the result
    upsampled back bilinearly), cross-attention to the words, feed-forward; a residual and a
    LayerNorm after each. Words may be narrower or wider (`text_dim`) than the visual tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dim_feedforward: int,
        dropout: float,
        reduction: int,
        text_dim: int | None = None,
    ):
        super().__init__()
        if reduction < 1:
            raise ValueError(f"VisionLanguageBlock: reduction must be >= 1, got {reduction}")
        self.reduction = reduction
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(
            dim, num_heads, dropout=dropout, kdim=text_dim, vdim=text_dim, batch_first=True
        )
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        mask: Tensor,
        words: Tensor,
        text_pos: Tensor,
        word_mask: Tensor,
        num_frames: int,
    ) -> Tensor:
        """x, pos: (B*T) x C x h x w; mask (B*T) x h x w (True = padding); words, text_pos:
        B x L x Ct; word_mask B x L (True = padding) -> (B*T) x C x h x w."""
        f, c, h, w = x.shape
        tokens = _clip_tokens(x, num_frames)
        attended = self._attend_clip(x, pos, mask, num_frames)
        tokens = self.norm1(tokens + self.dropout1(attended))
        query = tokens + _clip_tokens(pos, num_frames)
        attended = self.multihead_attn(
            query, words + text_pos, words, key_padding_mask=word_mask, need_weights=False
        )[0]
        tokens = self.norm2(tokens + self.dropout2(attended))
        hidden = self.linear2(self.dropout(F.relu(self.linear1(tokens))))
        tokens = self.norm3(tokens + self.dropout3(hidden))
        return (
            tokens.reshape(f // num_frames, num_frames, h, w, c)
            .permute(0, 1, 4, 2, 3)
            .flatten(0, 1)
        )

    def _attend_clip(self, x: Tensor, pos: Tensor, mask: Tensor, num_frames: int) -> Tensor:
        """Self-attention among the clip's positions -> B x (T*h*w) x C at full resolution."""
        h, w = x.shape[-2:]
        with_pos = x + pos
        if self.reduction > 1:
            size = (max(1, int(h / self.reduction)), max(1, int(w / self.reduction)))
            with_pos = F.interpolate(with_pos, size=size, mode="nearest")
            x = F.interpolate(x, size=size, mode="nearest")
            mask = F.interpolate(mask[None].float(), size=size, mode="nearest")[0].bool()
        qk = _clip_tokens(with_pos, num_frames)
        key_padding = mask.reshape(-1, num_frames * mask.shape[-2] * mask.shape[-1])
        out = self.self_attn(
            qk, qk, _clip_tokens(x, num_frames), key_padding_mask=key_padding, need_weights=False
        )[0]
        if self.reduction > 1:
            b, _, c = out.shape
            small = out.reshape(b, num_frames, *mask.shape[-2:], c).permute(0, 1, 4, 2, 3)
            small = F.interpolate(small.flatten(0, 1), size=(h, w), mode="bilinear")
            out = _clip_tokens(small, num_frames)
        return out


def _clip_tokens(x: Tensor, num_frames: int) -> Tensor:
    """(B*T) x C x h x w -> B x (T*h*w) x C, frame-major."""
    f, c = x.shape[:2]
    return (
        x.reshape(f // num_frames, num_frames, c, -1)
        .permute(0, 1, 3, 2)
        .reshape(f // num_frames, -1, c)
    )


class VisionLanguageFPN(nn.Module):
    """Fuses fine-to-coarse maps (backbone stride-4 map, encoder memory at strides 8/16/32) of
    clips into stride-4 mask features.

    Per level: 1x1 lateral conv + GroupNorm, a VisionLanguageBlock (spatial reduction
    `reductions[level]`), then the nearest-upsampled coarser output is added and a 3x3 conv +
    GroupNorm + ReLU smooths the sum; a final 3x3 conv (with bias) gives `mask_dim` channels.
    """

    def __init__(
        self,
        in_channels: list[int],
        conv_dim: int,
        mask_dim: int,
        num_heads: int,
        dim_feedforward: int,
        dropout: float,
        reductions: list[int],
        norm_groups: int,
        text_dim: int | None = None,
    ):
        super().__init__()
        if len(reductions) != len(in_channels):
            raise ValueError(
                f"VisionLanguageFPN: {len(reductions)} reductions for {len(in_channels)} levels"
            )
        self.position = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.lateral = nn.ModuleList(
            Conv2d(c, conv_dim, 1, bias=False, norm=nn.GroupNorm(norm_groups, conv_dim))
            for c in in_channels
        )
        self.output = nn.ModuleList(
            Conv2d(
                conv_dim,
                conv_dim,
                3,
                padding=1,
                bias=False,
                norm=nn.GroupNorm(norm_groups, conv_dim),
                activation=F.relu,
            )
            for _ in in_channels
        )
        self.blocks = nn.ModuleList(
            VisionLanguageBlock(conv_dim, num_heads, dim_feedforward, dropout, r, text_dim)
            for r in reductions
        )
        self.mask_proj = Conv2d(conv_dim, mask_dim, 3, padding=1)
        for conv in [*self.lateral, *self.output, self.mask_proj]:
            weight_init.c2_xavier_fill(conv)

    def forward(
        self,
        features: list[Tensor],
        masks: list[Tensor],
        words: Tensor,
        word_mask: Tensor,
        num_frames: int,
    ) -> Tensor:
        """features / masks: fine-to-coarse (B*T) x Ci x hi x wi maps and their padding masks
        (True = padding); words B x L x Ct with word_mask B x L -> (B*T) x mask_dim x h0 x w0."""
        if len(features) != len(self.lateral):
            raise ValueError(
                f"VisionLanguageFPN expects {len(self.lateral)} levels, got {len(features)}"
            )
        text_pos = sine_text_position(word_mask, words.shape[-1]).to(words.dtype)
        y = None
        for level in reversed(range(len(features))):
            x = self.lateral[level](features[level])
            pos = self.position(x, masks[level])
            x = self.blocks[level](x, pos, masks[level], words, text_pos, word_mask, num_frames)
            if y is not None:
                x = x + F.interpolate(y, size=x.shape[-2:], mode="nearest")
            y = self.output[level](x)
        return self.mask_proj(y)
