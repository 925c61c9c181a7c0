"""Text-guided initial reference points for the conditional queries.

The paper's queries start from reference points predicted from their learned position embedding
alone, so the first deformable layer samples the same places in every frame whatever the video
shows. Here each query first reads the expression's words (cross-attention, added to its
sentence-feature content: a pooled sentence feature of a frozen encoder hardly tells "left" from
"right"), then attends over every position of the (text-fused) encoder memory, keys carrying
their position embedding, and starts at the attention-weighted mean of the positions: where the
expression matches. `search_loss` supervises that attention directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos_d2.modeling.heads.vl_fusion import TextCrossAttention


class TextGuidedReference(nn.Module):
    """Each query (content + position) reads the words, then scaled dot-product attention from it
    to all memory positions (memory + position embedding) gives its expected position."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.read_words = TextCrossAttention(dim, num_heads)
        self.query_proj = nn.Linear(dim, dim)
        self.key_proj = nn.Linear(dim, dim)

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        words: Tensor,
        word_mask: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        coordinates: Tensor,
        padding: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """query, query_pos: F x N x C; words: F x L x C with word_mask F x L (True = padding);
        memory, memory_pos: F x S x C; coordinates: F x S x 2; padding: F x S (True = padding).
        Returns reference points F x N x 2 in [0, 1], the attention F x N x S (zero on padding)
        and the query content with the words it read added (F x N x C, for the decoder)."""
        query = query + self.read_words(query, words, word_mask, query_pos)
        q = self.query_proj(query + query_pos)
        k = self.key_proj(memory + memory_pos)
        logits = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
        attention = logits.masked_fill(padding[:, None], float("-inf")).softmax(dim=-1)
        points = attention @ coordinates.clamp(0.0, 1.0)
        return points, attention, query


def target_positions(masks: Tensor, spatial_shapes: Tensor, min_cover: float = 0.25) -> Tensor:
    """F x S bool: memory positions whose cell holds part of the target, from F x h x w target
    masks (area fractions on the padded frame at a finer stride) and the levels' shapes."""
    cells = [
        F.adaptive_max_pool2d(masks[:, None].float(), (h, w))[:, 0].flatten(1) >= min_cover
        for h, w in spatial_shapes.tolist()
    ]
    return torch.cat(cells, dim=1)


def search_loss(attention: Tensor, on_target: Tensor, visible: Tensor) -> Tensor:
    """Mean over frames where the target is visible of -log(attention mass on the target), for
    the query that puts the most mass there. attention F x N x S, on_target F x S, visible F."""
    mass = (attention * on_target[:, None].to(attention.dtype)).sum(dim=-1).amax(dim=1)
    per_frame = -mass.clamp(min=1e-6).log()
    if not visible.any():
        return per_frame.sum() * 0.0
    return per_frame[visible].mean()
