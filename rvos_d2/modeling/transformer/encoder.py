"""Deformable transformer encoder: multi-scale deformable self-attention over flattened levels."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rvos_d2.layers import MSDeformAttn
from rvos_d2.modeling.transformer.utils import (
    reset_stack_parameters,
    stack_kwargs,
    valid_ratios,
)

from detectron2.config import configurable


class DeformableTransformerEncoderLayer(nn.Module):
    """Deformable self-attention around each token's own position, then a feed-forward block."""

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
        self.self_attn = MSDeformAttn(d_model, n_levels, nhead, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Tensor | None,
    ) -> Tensor:
        attended = self.self_attn(
            src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask
        )
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.linear2(self.dropout2(torch.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(hidden))


def token_centres(shapes: list[tuple[int, int]], ratios: Tensor) -> Tensor:
    """Centre of every token of the flattened levels as N x S x 2 (x, y), normalised by its own
    level's valid (unpadded) extent: 0-1 inside the image, beyond 1 on padding."""
    points = []
    for level, (h, w) in enumerate(shapes):
        ys, xs = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=ratios.dtype, device=ratios.device),
            torch.linspace(0.5, w - 0.5, w, dtype=ratios.dtype, device=ratios.device),
            indexing="ij",
        )
        x = xs.reshape(1, -1) / (ratios[:, None, level, 0] * w)
        y = ys.reshape(1, -1) / (ratios[:, None, level, 1] * h)
        points.append(torch.stack([x, y], dim=-1))
    return torch.cat(points, dim=1)


def encoder_reference_points(shapes: list[tuple[int, int]], ratios: Tensor) -> Tensor:
    """Pixel centres of every level as N x S x L x 2 normalised (x, y) points.

    Each token's centre is normalised by its own level's valid extent, then projected onto every
    level's valid extent, so a token samples the same image location on all levels.
    """
    return token_centres(shapes, ratios)[:, :, None] * ratios[:, None]


class DeformableTransformerEncoder(nn.Module):
    """Flattens multi-scale maps (plus a learned per-level embedding) and refines them jointly.

    Frames of a clip are folded into the batch dimension N; they do not attend to each other.
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
    ):
        super().__init__()
        self.d_model = d_model
        self.n_levels = n_levels
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self.layers = nn.ModuleList(
            DeformableTransformerEncoderLayer(
                d_model, nhead, dim_feedforward, dropout, n_levels, n_points
            )
            for _ in range(num_layers)
        )
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg) -> dict:
        t = cfg.MODEL.DEFORMABLE_TRANSFORMER
        return stack_kwargs(cfg, num_layers=t.ENC_LAYERS, n_points=t.ENC_N_POINTS)

    def reset_parameters(self) -> None:
        """The shared layer init, plus a standard normal level embedding."""
        reset_stack_parameters(self.layers)
        nn.init.normal_(self.level_embed)

    def forward(
        self,
        srcs: list[Tensor],
        masks: list[Tensor | None] | None,
        pos_embeds: list[Tensor],
    ) -> dict[str, Tensor]:
        """srcs, pos_embeds: per level N x C x H x W; masks: per level N x H x W (True = padding).

        Returns memory (N x S x C), spatial_shapes (L x 2 int64), level_start_index (L int64),
        valid_ratios (N x L x 2, (w, h) fraction of each level that is image) and mask_flatten
        (N x S bool, True = padding).
        """
        if len(srcs) != self.n_levels or len(pos_embeds) != self.n_levels:
            raise ValueError(
                f"DeformableTransformerEncoder: expected {self.n_levels} levels, got "
                f"{len(srcs)} srcs and {len(pos_embeds)} pos_embeds"
            )
        if masks is None:
            masks = [None] * self.n_levels
        if len(masks) != self.n_levels:
            raise ValueError(
                f"DeformableTransformerEncoder: expected {self.n_levels} masks, got {len(masks)}"
            )
        n = srcs[0].shape[0]
        tokens, positions, paddings, ratios, shapes = [], [], [], [], []
        for level, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            if src.dim() != 4 or src.shape[:2] != (n, self.d_model) or pos.shape != src.shape:
                raise ValueError(
                    f"DeformableTransformerEncoder: level {level} src {tuple(src.shape)} and "
                    f"pos_embed {tuple(pos.shape)} must both be {n} x {self.d_model} x H x W"
                )
            h, w = src.shape[-2:]
            if mask is None:
                mask = torch.zeros(n, h, w, dtype=torch.bool, device=src.device)
            elif mask.shape != (n, h, w):
                raise ValueError(
                    f"DeformableTransformerEncoder: level {level} mask must be {n} x {h} x {w}, "
                    f"got {tuple(mask.shape)}"
                )
            shapes.append((h, w))
            tokens.append(src.flatten(2).transpose(1, 2))
            positions.append(pos.flatten(2).transpose(1, 2) + self.level_embed[level])
            paddings.append(mask.flatten(1))
            ratios.append(valid_ratios(mask))
        device = srcs[0].device
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=device)
        sizes = spatial_shapes.prod(1)
        level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        ratios = torch.stack(ratios, dim=1)
        mask_flatten = torch.cat(paddings, dim=1)
        pos_flatten = torch.cat(positions, dim=1)
        reference_points = encoder_reference_points(shapes, ratios)
        memory = torch.cat(tokens, dim=1)
        for layer in self.layers:
            memory = layer(
                memory,
                pos_flatten,
                reference_points,
                spatial_shapes,
                level_start_index,
                mask_flatten,
            )
        return {
            "memory": memory,
            "spatial_shapes": spatial_shapes,
            "level_start_index": level_start_index,
            "valid_ratios": ratios,
            "mask_flatten": mask_flatten,
        }
