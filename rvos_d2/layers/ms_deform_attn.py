"""`MSDeformAttn`: the multi-scale deformable attention layer of Deformable DETR."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rvos_d2.layers.ms_deform_attn_func import ms_deform_attn


class MSDeformAttn(nn.Module):
    """Each query attends to `n_points` learned locations per level and head around its reference.

    Sampling offsets and attention weights are linear functions of the query; values are a linear
    projection of the flattened multi-scale input.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(
                f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads})"
            )
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initial offsets fan out on a circle (one direction per head, radius = point index)."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float64) * (2 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        # Scale so the larger coordinate is 1: the first point sits one pixel away on its level.
        directions = directions / directions.abs().amax(dim=-1, keepdim=True)
        radii = torch.arange(1, self.n_points + 1, dtype=torch.float64)
        bias = directions[:, None, None, :] * radii[None, None, :, None]  # M x 1 x P x 2
        bias = bias.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor,
        input_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attends from `query` (N x Lq x C) into `input_flatten` (N x S x C); returns N x Lq x C.

        reference_points: N x Lq x L x 2 normalised (x, y) points, or N x Lq x L x 4 boxes
        (cx, cy, w, h) whose size scales the offsets. input_padding_mask: N x S, True = padding.
        """
        n, lq, c = query.shape
        s = input_flatten.shape[1]
        if c != self.d_model or input_flatten.shape[-1] != self.d_model:
            raise ValueError(
                f"MSDeformAttn: query {tuple(query.shape)} and input_flatten "
                f"{tuple(input_flatten.shape)} must have {self.d_model} channels"
            )
        if input_flatten.shape[0] != n:
            raise ValueError(
                f"MSDeformAttn: input_flatten batch {input_flatten.shape[0]} != query batch {n}"
            )
        if input_spatial_shapes.shape != (self.n_levels, 2):
            raise ValueError(
                f"MSDeformAttn: input_spatial_shapes must be {self.n_levels} x 2, got "
                f"{tuple(input_spatial_shapes.shape)}"
            )
        ref_dims = reference_points.shape[-1]
        if reference_points.shape[:3] != (n, lq, self.n_levels) or ref_dims not in (2, 4):
            raise ValueError(
                f"MSDeformAttn: reference_points must be {n} x {lq} x {self.n_levels} x (2|4), "
                f"got {tuple(reference_points.shape)}"
            )
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            if input_padding_mask.shape != (n, s):
                raise ValueError(
                    f"MSDeformAttn: input_padding_mask must be {n} x {s}, got "
                    f"{tuple(input_padding_mask.shape)}"
                )
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, s, self.n_heads, self.d_model // self.n_heads)

        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        offsets = self.sampling_offsets(query).view(n, lq, heads, levels, points, 2)
        weights = self.attention_weights(query).view(n, lq, heads, levels * points)
        weights = weights.softmax(-1).view(n, lq, heads, levels, points)

        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: divide by (w, h).
            normalizer = input_spatial_shapes.flip(-1).to(offsets.dtype)
            locations = (
                reference_points[:, :, None, :, None, :]
                + offsets / normalizer[None, None, None, :, None, :]
            )
        else:
            # Offsets are relative to the box: P points span half its size in each direction.
            centers = reference_points[:, :, None, :, None, :2]
            sizes = reference_points[:, :, None, :, None, 2:]
            locations = centers + offsets / points * sizes * 0.5
        output = ms_deform_attn(
            value, input_spatial_shapes, input_level_start_index, locations, weights
        )
        return self.output_proj(output)
