"""SOC's visual-linguistic contrastive supervision (Eqs. 5-6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["contrastive_loss", "guidance_embedding", "query_text_similarity"]


def guidance_embedding(words: Tensor, word_mask: Tensor) -> Tensor:
    """Textual guidance embedding (Eq. 5): mean of the valid tokens of the last fused word
    features. words B x L x C, word_mask B x L (True = padding) -> B x C."""
    valid = (~word_mask).unsqueeze(-1).to(words.dtype)
    return (words * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)


def query_text_similarity(video_queries: Tensor, guidance: Tensor) -> Tensor:
    """Scaled dot products of the Nv video queries (B x Nv x C) with the guidance (B x C)
    -> B x Nv. The released code divides by C (the paper's text writes sqrt(C)); we follow
    the code, whose checkpoints were trained with it."""
    scaled = video_queries / video_queries.shape[-1]
    return (scaled @ guidance.unsqueeze(-1)).squeeze(-1)


def contrastive_loss(video_queries: Tensor, guidance: Tensor, matched: Tensor) -> Tensor:
    """Eq. 6: -log softmax over the video queries of the similarity, at the query matched to
    the target (the best predicted trajectory), averaged over the batch. matched: B (long)."""
    sim = query_text_similarity(video_queries, guidance)
    log_prob = F.log_softmax(sim, dim=-1)
    return -log_prob[torch.arange(sim.shape[0], device=sim.device), matched].mean()
