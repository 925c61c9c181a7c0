"""SOC's two-stream multi-modal fusion (MMF, Eqs. 2-3): language-to-vision and vision-to-language
gated cross-attention, one set of parameters per direction shared by every scale."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["FUSION_MODES", "GatedCrossAttention", "MultiModalFusion"]

FUSION_MODES = ("none", "l2v", "v2l", "both")  # the fusion strategies of the paper's Table 4


class GatedCrossAttention(nn.Module):
    """Gates every target token by what it reads from a memory: x * MHA(x, y + pos_y, y)."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)

    def forward(
        self,
        target: Tensor,
        memory: Tensor,
        memory_mask: Tensor | None = None,
        memory_pos: Tensor | None = None,
    ) -> Tensor:
        """target B x P x C, memory B x S x C with memory_mask B x S (True = padding) and an
        optional memory position encoding B x S x C -> B x P x C."""
        key = memory if memory_pos is None else memory + memory_pos
        read = self.attn(target, key, memory, key_padding_mask=memory_mask, need_weights=False)[0]
        return target * read


class MultiModalFusion(nn.Module):
    """Language-to-vision (L2V: each visual position gated by the words it attends to) and
    vision-to-language (V2L: each word gated by the visual positions of all frames it attends
    to) streams. A direction that is switched off returns its input unchanged."""

    def __init__(self, dim: int, num_heads: int, mode: str = "both"):
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"MODEL.SOC.FUSION={mode!r}: expected one of {FUSION_MODES}")
        self.mode = mode
        with_l2v, with_v2l = mode in ("l2v", "both"), mode in ("v2l", "both")
        self.language_to_vision = GatedCrossAttention(dim, num_heads) if with_l2v else None
        self.vision_to_language = GatedCrossAttention(dim, num_heads) if with_v2l else None

    def fuse_vision(
        self, visual: Tensor, words: Tensor, word_mask: Tensor, word_pos: Tensor
    ) -> Tensor:
        """visual B x P x C; words B x L x C, word_mask B x L, word_pos B x L x C -> B x P x C."""
        if self.language_to_vision is None:
            return visual
        return self.language_to_vision(visual, words, word_mask, word_pos)

    def fuse_language(
        self, words: Tensor, visual: Tensor, visual_mask: Tensor, visual_pos: Tensor
    ) -> Tensor:
        """words B x L x C; visual tokens of a whole clip B x P x C with their padding mask and
        position encoding -> B x L x C."""
        if self.vision_to_language is None:
            return words
        return self.vision_to_language(words, visual, visual_mask, visual_pos)
