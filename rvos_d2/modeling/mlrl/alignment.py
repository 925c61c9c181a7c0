"""MLRL's dynamic semantic alignment (Sec. 3.2): a language transformer per visual granularity
and the word-to-pixel alignment of Eq. 9-11, across time (video level) or per frame."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rvos_d2.modeling.heads.vision_language_fpn import sine_text_position
from rvos_d2.modeling.transformer.position_encoding import PositionEmbeddingSine

__all__ = ["LanguageTransformer", "SemanticAlignment", "SentenceFusion"]


class LanguageTransformer(nn.Module):
    """Transformer encoder over the word features, giving one granularity's linguistic
    features S (N x d); padding words are masked out."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, dim_feedforward: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MODEL.MLRL.LANGUAGE_LAYERS must be >= 1, got {num_layers}")
        layer = nn.TransformerEncoderLayer(
            dim, num_heads, dim_feedforward, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, words: Tensor, word_mask: Tensor) -> Tensor:
        """words: B x N x d; word_mask: B x N bool (True = padding) -> B x N x d."""
        return self.encoder(words, src_key_padding_mask=word_mask)


class SemanticAlignment(nn.Module):
    """M = Linear(softmax(P'S'^T / sqrt(d)) S + P) with P' = Linear(P + POS^V) and
    S' = Linear(S + POS^L) (Eq. 9-11): every pixel gathers the words it matches.

    Video-level alignment (`temporal`) gives each pixel a position in (t, y, x) across the clip;
    frame-level alignment a position in (y, x) within its frame. Sine encodings, normalised over
    each frame's unpadded part and the clip's length.
    """

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        if dim % 4:
            raise ValueError(f"MODEL.MLRL.HIDDEN_DIM must be a multiple of 4, got {dim}")
        self.visual_proj, self.text_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.position = PositionEmbeddingSine(dim // 2)
        self.temporal = temporal

    def visual_position(self, x: Tensor, padding: Tensor, num_frames: int) -> Tensor:
        """POS^V, (B*T) x d x h x w: the (y, x) encoding, plus the t encoding if `temporal`."""
        pos = self.position(x, padding)
        if self.temporal:
            frames = torch.zeros(
                x.shape[0] // num_frames, num_frames, dtype=torch.bool, device=x.device
            )
            time = sine_text_position(frames, x.shape[1])  # B x T x d
            pos = pos + time.flatten(0, 1)[..., None, None].to(pos.dtype)
        return pos

    def forward(
        self, x: Tensor, padding: Tensor, num_frames: int, words: Tensor, word_mask: Tensor
    ) -> Tensor:
        """x: (B*T) x d x h x w visual embedding; padding (B*T) x h x w; words B x N x d
        (this granularity's S), word_mask B x N -> target-aware features, (B*T) x d x h x w."""
        n, d, h, w = x.shape
        pos = self.visual_position(x, padding, num_frames)
        pixels = x.flatten(2).transpose(1, 2).reshape(n // num_frames, -1, d)  # B x Thw x d
        pixel_pos = pos.flatten(2).transpose(1, 2).reshape(n // num_frames, -1, d)
        text_pos = sine_text_position(word_mask, d).to(words.dtype)
        query = self.visual_proj(pixels + pixel_pos)
        key = self.text_proj(words + text_pos)
        logits = query @ key.transpose(1, 2) / math.sqrt(d)  # B x Thw x N
        attention = logits.masked_fill(word_mask[:, None, :], float("-inf")).softmax(-1)
        aligned = self.out_proj(attention @ words + pixels)
        return aligned.reshape(n, h, w, d).permute(0, 3, 1, 2)


class SentenceFusion(nn.Module):
    """The "w/o alignment" ablation (Table 3): M = Linear(P + mean of S over the valid words),
    the same sentence vector added to every pixel instead of word-to-pixel attention."""

    def __init__(self, dim: int):
        super().__init__()
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, padding: Tensor, num_frames: int, words: Tensor, word_mask: Tensor
    ) -> Tensor:
        """Same arguments and result as SemanticAlignment.forward."""
        valid = (~word_mask).unsqueeze(-1).to(words.dtype)
        sentence = (words * valid).sum(1) / valid.sum(1).clamp(min=1)  # B x d
        fused = x + sentence.repeat_interleave(num_frames, 0)[..., None, None]
        return self.out_proj(fused.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
