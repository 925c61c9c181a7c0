"""URVOS's attention blocks: per-modality self-attention (Eq. 2), cross-modal attention over
every (pixel, word) pair (Eq. 3-7) and memory attention from a target frame to memory frames
(Eq. 8-14). Dot products are scaled by 1 / sqrt(channels) to keep the softmax unsaturated."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rvos_d2.modeling.urvos.coords import spatial_coords, spatiotemporal_coords

__all__ = [
    "ConcatFusion",
    "CrossModalAttention",
    "MemoryAttention",
    "VisualSelfAttention",
    "WordSelfAttention",
    "attend",
]


def attend(query: Tensor, key: Tensor, value: Tensor, excluded: Tensor | None = None) -> Tensor:
    """Softmax(q k^T / sqrt(C)) v for B x Nq x C queries, B x Nk x C keys, B x Nk x D values;
    `excluded` (B x Nk or B x Nq x Nk, True = not attended) removes keys. A query with no key
    left reads zeros."""
    scores = query @ key.transpose(1, 2) / query.shape[-1] ** 0.5
    if excluded is not None:
        if excluded.dim() == 2:
            excluded = excluded[:, None, :]
        scores = scores.masked_fill(excluded, float("-inf"))
    weights = scores.softmax(-1).nan_to_num(0.0)  # all keys excluded -> NaN rows -> 0
    return weights @ value


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class VisualSelfAttention(nn.Module):
    """SA^vis: pixels attend to every unpadded pixel of their map; value + attended values."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.query, self.key, self.value = (_conv3x3(in_channels, dim) for _ in range(3))

    def forward(self, x: Tensor, padding: Tensor | None = None) -> Tensor:
        """x: N x C x h x w, padding: N x h x w (True = padding) -> N x dim x h x w."""
        value = self.value(x)
        q, k, v = (t.flatten(2).transpose(1, 2) for t in (self.query(x), self.key(x), value))
        excluded = None if padding is None else padding.flatten(1)
        attended = attend(q, k, v, excluded).transpose(1, 2).reshape(value.shape)
        return value + attended


class WordSelfAttention(nn.Module):
    """SA^lang: words attend to every non-padding word of their expression."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(in_dim, dim) for _ in range(3))

    def forward(self, words: Tensor, word_mask: Tensor) -> Tensor:
        """words: N x L x C, word_mask: N x L (True = padding) -> N x L x dim."""
        value = self.value(words)
        return value + attend(self.query(words), self.key(words), value, word_mask)


class CrossModalAttention(nn.Module):
    """The cross-modal attention module (Fig. 3a): location-aware pixels (Eq. 1) and words each
    pass their self-attention, every (pixel, word) pair is concatenated (Eq. 3), the pairs
    attend to all pairs (Eq. 4-7) and the result is averaged over the words.

    The residual of Eq. 7 goes through a 3x3 conv (as in the authors' code), since c_pl has
    2 x dim channels and the attended values dim.
    """

    def __init__(self, visual_channels: int, word_dim: int, dim: int):
        super().__init__()
        self.visual = VisualSelfAttention(visual_channels + 8, dim)
        self.words = WordSelfAttention(word_dim, dim)
        self.query, self.key, self.value, self.residual = (_conv3x3(2 * dim, dim) for _ in range(4))

    def forward(
        self, features: Tensor, padding: Tensor, words: Tensor, word_mask: Tensor
    ) -> Tensor:
        """features N x C x h x w (Res5), padding N x h x w, words N x L x Cw, word_mask N x L
        -> the cross-modal attentive map N x dim x h x w."""
        n, _, h, w = features.shape
        length = words.shape[1]
        coords = spatial_coords(h, w, features.device).expand(n, -1, -1, -1)
        pixels = self.visual(torch.cat([features, coords], 1), padding)  # N x dim x h x w
        lang = self.words(words, word_mask)  # N x L x dim
        joint = torch.cat(
            [
                pixels[:, None].expand(-1, length, -1, -1, -1),
                lang[:, :, :, None, None].expand(-1, -1, -1, h, w),
            ],
            dim=2,
        ).flatten(0, 1)  # (N * L) x 2dim x h x w
        q, k, v, res = (
            conv(joint).unflatten(0, (n, length)).permute(0, 1, 3, 4, 2).flatten(1, 3)
            for conv in (self.query, self.key, self.value, self.residual)
        )  # N x (L * h * w) x dim
        excluded = (word_mask[:, :, None, None] | padding[:, None]).flatten(1)
        pairs = (res + attend(q, k, v, excluded)).unflatten(1, (length, h, w))
        valid = (~word_mask).float()[:, :, None, None, None]
        mean = (pairs * valid).sum(1) / valid.sum(1).clamp(min=1)
        return mean.permute(0, 3, 1, 2)


class ConcatFusion(nn.Module):
    """The "w/o cross-modal attention" ablation: location-aware pixels concatenated with the
    mean of the expression's words and projected by a 3x3 conv, without any attention."""

    def __init__(self, visual_channels: int, word_dim: int, dim: int):
        super().__init__()
        self.proj = _conv3x3(visual_channels + 8 + word_dim, dim)

    def forward(
        self, features: Tensor, padding: Tensor, words: Tensor, word_mask: Tensor
    ) -> Tensor:
        """Same inputs and output as CrossModalAttention."""
        n, _, h, w = features.shape
        valid = (~word_mask).float()[..., None]
        sentence = (words * valid).sum(1) / valid.sum(1).clamp(min=1)  # N x Cw
        coords = spatial_coords(h, w, features.device).expand(n, -1, -1, -1)
        tiled = sentence[:, :, None, None].expand(-1, -1, h, w)
        return self.proj(torch.cat([features, coords, tiled], 1))


class MemoryAttention(nn.Module):
    """The memory attention module (Fig. 3b): keys and values of the target frame's Res4 with
    spatial coordinates (Eq. 8-10) and of the memory frames' mask-encoded Res4 with
    spatio-temporal coordinates (Eq. 11-13); the target reads the memory (Eq. 14) with f the
    softmax over every memory pixel of the key dot products."""

    def __init__(self, visual_channels: int, memory_channels: int, dim: int):
        super().__init__()
        self.key, self.value = (_conv3x3(visual_channels + 8, dim) for _ in range(2))
        self.memory_key, self.memory_value = (_conv3x3(memory_channels + 12, dim) for _ in range(2))

    def target(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Key and value (N x dim x h x w each) of target frames' N x C x h x w Res4 maps."""
        n, _, h, w = features.shape
        x = torch.cat([features, spatial_coords(h, w, features.device).expand(n, -1, -1, -1)], 1)
        return self.key(x), self.value(x)

    def memory(self, features: Tensor, frames: Tensor, duration: int) -> tuple[Tensor, Tensor]:
        """Key and value (M x dim x h x w) of memory frames' M x C x h x w mask-encoded maps,
        at indices `frames` (M) of a video of `duration` frames."""
        _, _, h, w = features.shape
        x = torch.cat([features, spatiotemporal_coords(frames, duration, h, w)], 1)
        return self.memory_key(x), self.memory_value(x)

    def forward(
        self,
        key: Tensor,
        value: Tensor,
        memory_key: Tensor,
        memory_value: Tensor,
        allowed: Tensor | None = None,
    ) -> Tensor:
        """The memory-attentive map B x Tq x dim x h x w of Tq target frames (key, value:
        B x Tq x dim x h x w) reading Tm memory frames (B x Tm x dim x h x w); `allowed`
        (B x Tq x Tm bool) says which memory frames each target reads (None: all)."""
        b, tq, dim, h, w = key.shape
        tm = memory_key.shape[1]
        q, k, v = (
            x.permute(0, 1, 3, 4, 2).reshape(b, -1, dim) for x in (key, memory_key, memory_value)
        )  # B x (T h w) x dim
        excluded = None
        if allowed is not None:
            excluded = (~allowed)[:, :, None, :, None].expand(b, tq, h * w, tm, h * w)
            excluded = excluded.reshape(b, tq * h * w, tm * h * w)
        read = attend(q, k, v, excluded)  # B x (Tq h w) x dim
        return value + read.reshape(b, tq, h, w, dim).permute(0, 1, 4, 2, 3)
