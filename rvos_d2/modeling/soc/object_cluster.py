"""SOC's video-level object cluster (VOC): temporal self-attention over the frame queries of a
clip, then an object grouping decoder whose video queries start from the sentence feature."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AttentionBlock", "FeedForwardBlock", "VideoObjectCluster"]


class AttentionBlock(nn.Module):
    """Post-norm residual attention: norm(x + dropout(MHA(x + pos, m + pos_m, m))); without a
    memory it is self-attention over x (keys x + pos, values x)."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        x: Tensor,
        pos: Tensor | None = None,
        memory: Tensor | None = None,
        memory_pos: Tensor | None = None,
    ) -> Tensor:
        """x B x N x C, pos broadcastable to x; memory B x S x C (None: x), memory_pos."""
        query = x if pos is None else x + pos
        if memory is None:
            key, value = query, x
        else:
            key = memory if memory_pos is None else memory + memory_pos
            value = memory
        out = self.attn(query, key, value, need_weights=False)[0]
        return self.norm(x + self.dropout(out))


class FeedForwardBlock(nn.Module):
    """Post-norm residual two-layer ReLU MLP."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        out = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm(x + self.dropout(out))


class TemporalEncoderLayer(nn.Module):
    """Self-attention over all T x Nq frame queries of a clip (inter-frame interaction), FFN."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = AttentionBlock(dim, num_heads, dropout)
        self.ffn = FeedForwardBlock(dim, ffn_dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn(self.self_attn(x))


class GroupingDecoderLayer(nn.Module):
    """Video queries read the encoded frame queries (cross-attention), then each other
    (self-attention), then an FFN."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.cross_attn = AttentionBlock(dim, num_heads, dropout)
        self.self_attn = AttentionBlock(dim, num_heads, dropout)
        self.ffn = FeedForwardBlock(dim, ffn_dim, dropout)

    def forward(self, x: Tensor, pos: Tensor, memory: Tensor, memory_pos: Tensor) -> Tensor:
        x = self.cross_attn(x, pos, memory, memory_pos)
        return self.ffn(self.self_attn(x, pos))


class VideoObjectCluster(nn.Module):
    """Groups the frame queries of a clip into Nv video-level object queries.

    The T x Nq frame queries (flattened frame-major) pass `enc_layers` temporal self-attention
    layers; Nv video queries, each initialised with the sentence feature and carrying a learned
    position, then decode them (`dec_layers` layers; the frame queries carry a learned position
    per query index, shared by all frames). A final LayerNorm gives the video queries.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        enc_layers: int,
        dec_layers: int,
        num_frame_queries: int,
        num_queries: int,
        dropout: float = 0.1,
    ):
        super().__init__()
        if dec_layers < 1:
            raise ValueError(f"MODEL.SOC.VOC.DEC_LAYERS={dec_layers}: needs at least one layer")
        self.encoder = nn.ModuleList(
            TemporalEncoderLayer(dim, num_heads, ffn_dim, dropout) for _ in range(enc_layers)
        )
        self.decoder = nn.ModuleList(
            GroupingDecoderLayer(dim, num_heads, ffn_dim, dropout) for _ in range(dec_layers)
        )
        self.frame_query_pos = nn.Embedding(num_frame_queries, dim)
        self.query_pos = nn.Embedding(num_queries, dim)
        self.norm = nn.LayerNorm(dim)
        for p in [*self.encoder.parameters(), *self.decoder.parameters()]:
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    @property
    def num_queries(self) -> int:
        return self.query_pos.num_embeddings

    def forward(self, frame_queries: Tensor, sentence: Tensor) -> Tensor:
        """frame_queries B x T x Nq x C (Nq = num_frame_queries), sentence B x C
        -> video queries B x Nv x C."""
        b, t, nq, c = frame_queries.shape
        if nq != self.frame_query_pos.num_embeddings:
            raise ValueError(
                f"VideoObjectCluster: {nq} frame queries per frame, built for "
                f"{self.frame_query_pos.num_embeddings}"
            )
        memory = frame_queries.reshape(b, t * nq, c)
        for layer in self.encoder:
            memory = layer(memory)
        memory_pos = self.frame_query_pos.weight.repeat(t, 1)[None]
        pos = self.query_pos.weight[None]
        x = sentence[:, None].expand(-1, self.num_queries, -1)
        for layer in self.decoder:
            x = layer(x, pos, memory, memory_pos)
        return self.norm(x)
