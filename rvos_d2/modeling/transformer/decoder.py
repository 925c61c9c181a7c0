"""Deformable transformer decoder with optional iterative box refinement (Deformable DETR)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rvos_d2.layers import MSDeformAttn
from rvos_d2.modeling.transformer.utils import refine_boxes, reset_stack_parameters, stack_kwargs

from detectron2.config import configurable


class DeformableTransformerDecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention into the memory, feed-forward."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        n_levels: int = 4,
        n_points: int = 4,
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model, n_levels, nhead, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor | None,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        memory_padding_mask: Tensor | None,
    ) -> Tensor:
        with_pos = tgt if query_pos is None else tgt + query_pos
        attended = self.self_attn(with_pos, with_pos, tgt, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        with_pos = tgt if query_pos is None else tgt + query_pos
        attended = self.cross_attn(
            with_pos,
            reference_points,
            memory,
            spatial_shapes,
            level_start_index,
            memory_padding_mask,
        )
        tgt = self.norm1(tgt + self.dropout1(attended))
        hidden = self.linear2(self.dropout3(torch.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(hidden))


class DeformableTransformerDecoder(nn.Module):
    """Stack of decoder layers; each query attends around its reference point on every level.

    Iterative refinement: given `bbox_embed` (an nn.ModuleList with one module per layer mapping
    C -> 4, built by the query decoder that also predicts boxes with it), each layer's output
    predicts a box delta that is added to the reference in inverse-sigmoid space; the refined
    box, detached, is the next layer's reference.
    A 2-d reference point becomes a 4-d box after the first refinement (the delta's size part).
    """

    @configurable
    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        n_levels: int = 4,
        n_points: int = 4,
        return_intermediate: bool = True,
        bbox_embed: nn.ModuleList | None = None,
    ):
        super().__init__()
        self.d_model = d_model
        self.return_intermediate = return_intermediate
        self.layers = nn.ModuleList(
            DeformableTransformerDecoderLayer(
                d_model, nhead, dim_feedforward, dropout, n_levels, n_points
            )
            for _ in range(num_layers)
        )
        self.reset_parameters()
        self.bbox_embed = bbox_embed

    @classmethod
    def from_config(cls, cfg) -> dict:
        t = cfg.MODEL.DEFORMABLE_TRANSFORMER
        return stack_kwargs(cfg, num_layers=t.DEC_LAYERS, n_points=t.DEC_N_POINTS)

    def reset_parameters(self) -> None:
        """The shared layer init (Xavier matrices, MSDeformAttn's own scheme)."""
        reset_stack_parameters(self.layers)

    def forward(
        self,
        tgt: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        query_pos: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Decodes queries tgt (N x Q x C) around reference_points (N x Q x 2|4, sigmoid space,
        relative to the valid image) into the encoder memory (N x S x C).

        Returns (hs, references): hs is num_layers x N x Q x C (1 x ... without
        return_intermediate); references[i] is the reference AFTER layer i's refinement, i.e. the
        input of layer i+1 (layer 0 uses the `reference_points` argument). Without `bbox_embed`
        every entry equals `reference_points`. Refined references are detached; meta-architectures
        predict boxes from hs[i] and the reference that layer i used, to keep gradients.
        """
        n, q, _ = tgt.shape
        if reference_points.shape[:2] != (n, q) or reference_points.shape[-1] not in (2, 4):
            raise ValueError(
                f"DeformableTransformerDecoder: reference_points must be {n} x {q} x (2|4), got "
                f"{tuple(reference_points.shape)}"
            )
        if valid_ratios.shape != (n, spatial_shapes.shape[0], 2):
            raise ValueError(
                f"DeformableTransformerDecoder: valid_ratios must be {n} x "
                f"{spatial_shapes.shape[0]} x 2, got {tuple(valid_ratios.shape)}"
            )
        if self.bbox_embed is not None and len(self.bbox_embed) != len(self.layers):
            raise ValueError(
                f"DeformableTransformerDecoder: bbox_embed has {len(self.bbox_embed)} modules for "
                f"{len(self.layers)} layers"
            )
        output = tgt
        hs, references = [], []
        for index, layer in enumerate(self.layers):
            # Relative to the valid image -> relative to each padded level.
            if reference_points.shape[-1] == 4:
                scale = torch.cat([valid_ratios, valid_ratios], dim=-1)[:, None]
            else:
                scale = valid_ratios[:, None]
            level_points = reference_points[:, :, None] * scale
            output = layer(
                output,
                query_pos,
                level_points,
                memory,
                spatial_shapes,
                level_start_index,
                memory_padding_mask,
            )
            if self.bbox_embed is not None:
                delta = self.bbox_embed[index](output)
                reference_points = refine_boxes(delta, reference_points).detach()
            if self.return_intermediate:
                hs.append(output)
                references.append(reference_points)
        if not self.return_intermediate:
            return output[None], reference_points[None]
        return torch.stack(hs), torch.stack(references)
