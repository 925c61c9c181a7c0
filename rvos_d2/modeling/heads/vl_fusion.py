"""Vision-language fusion: every visual position attends to the words of the expression."""

from __future__ import annotations

import torch
from torch import nn


class TextCrossAttention(nn.Module):
    """Multi-head cross-attention from visual positions (queries) to word features (keys/values).

    Returns, for every visual position, the word features it attends to (same width as the
    visual features); callers decide how to merge them (multiplication before the encoder,
    a residual sum in the cross-modal FPN).
    """

    def __init__(self, dim: int, num_heads: int, text_dim: int | None = None):
        super().__init__()
        text_dim = dim if text_dim is None else text_dim
        self.attn = nn.MultiheadAttention(
            dim, num_heads, kdim=text_dim, vdim=text_dim, batch_first=True
        )

    def forward(
        self,
        visual: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        visual_pos: torch.Tensor | None = None,
        word_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """visual F x P x C, words F x L x Ct, word_mask F x L (True = padding) -> F x P x C;
        the positions, where given, are added to the queries / to the keys (not the values)."""
        query = visual if visual_pos is None else visual + visual_pos
        key = words if word_pos is None else words + word_pos
        return self.attn(query, key, words, key_padding_mask=word_mask, need_weights=False)[0]
