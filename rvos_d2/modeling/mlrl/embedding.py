"""MLRL's multi-level visual embedding (Sec. 3.1): pixel self-attention over a whole clip
(video level, Eq. 1-3) or within each frame (frame level, Eq. 4), and the object encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OBJECT_ENCODERS", "ObjectEncoder", "PixelEmbedding", "PixelSelfAttention"]

OBJECT_ENCODERS = ("video", "frame", "fcn")


class PixelSelfAttention(nn.Module):
    """Single-head dot-product self-attention with a residual, softmax(QK^T / sqrt(d)) V + P
    (Eq. 1-4), over sequences of pixels; padding pixels are no keys.

    Queries are processed `chunk` at a time (0: all at once): each chunk still attends to every
    key, so the result is the same, while the attention matrix held at once is chunk x L instead
    of L x L (L = T*h*w for a whole clip).
    """

    def __init__(self, dim: int, chunk: int = 0):
        super().__init__()
        if chunk < 0:
            raise ValueError(f"MODEL.MLRL.ATTENTION_CHUNK must be >= 0, got {chunk}")
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
        self.chunk = chunk

    def forward(self, x: Tensor, padding: Tensor | None = None) -> Tensor:
        """x: N x L x d; padding: N x L bool (True = padding) -> N x L x d."""
        k, v = self.key(x)[:, None], self.value(x)[:, None]  # N x 1 x L x d (one head)
        allowed = None if padding is None else ~padding[:, None, None, :]
        step = self.chunk or x.shape[1]
        out = [
            F.scaled_dot_product_attention(self.query(part)[:, None], k, v, attn_mask=allowed)
            for part in x.split(step, dim=1)
        ]
        return torch.cat(out, dim=2)[:, 0] + x


class PixelEmbedding(nn.Module):
    """PixelSelfAttention on feature maps: over all T*h*w pixels of each clip (video-level
    embedding) or, with `per_frame`, over the h*w pixels of each frame (frame-level)."""

    def __init__(self, dim: int, per_frame: bool, chunk: int = 0):
        super().__init__()
        self.attention = PixelSelfAttention(dim, chunk)
        self.per_frame = per_frame

    def forward(self, x: Tensor, padding: Tensor, num_frames: int) -> Tensor:
        """x: (B*T) x d x h x w, clips' frames consecutive; padding: (B*T) x h x w bool."""
        n, d, h, w = x.shape
        groups = n if self.per_frame else n // num_frames
        tokens = x.flatten(2).transpose(1, 2).reshape(groups, -1, d)
        out = self.attention(tokens, padding.reshape(groups, -1))
        return out.reshape(n, h, w, d).permute(0, 3, 1, 2)


class ObjectEncoder(nn.Module):
    """The object encoder F_enc (Eq. 5): the video-level embedding (the paper's choice,
    "video") or the frame-level one ("frame") followed by a 3x3 convolution; or a
    fully-convolutional encoder of two 3x3 conv-GroupNorm-ReLU blocks ("fcn"). Table 3."""

    def __init__(self, dim: int, kind: str = "video", chunk: int = 0):
        super().__init__()
        if kind not in OBJECT_ENCODERS:
            raise ValueError(
                f"MODEL.MLRL.OBJECT_ENCODER={kind!r}: expected one of {OBJECT_ENCODERS}"
            )
        if kind == "fcn":
            self.embedding = None
            self.conv = nn.Sequential(
                *(
                    layer
                    for _ in range(2)
                    for layer in (
                        nn.Conv2d(dim, dim, 3, padding=1),
                        nn.GroupNorm(8, dim),
                        nn.ReLU(),
                    )
                )
            )
        else:
            self.embedding = PixelEmbedding(dim, per_frame=kind == "frame", chunk=chunk)
            self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor, padding: Tensor, num_frames: int) -> Tensor:
        """x: (B*T) x d x h x w; padding (B*T) x h x w bool -> the object-level embedding."""
        if self.embedding is not None:
            x = self.embedding(x, padding, num_frames)
        return self.conv(x)
