"""Dynamic mask head: each query's embedding becomes the weights of a tiny per-query conv net."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rvos_d2.modeling.heads.prediction import MLP

NUM_DYNAMIC_LAYERS = 3  # 1x1 dynamic convolutions per query (the paper's three layers)


def relative_coordinates(
    centres: torch.Tensor,
    feature_size: tuple[int, int],
    stride: int,
    image_sizes: torch.Tensor,
    pixels: bool = False,
) -> torch.Tensor:
    """Offsets from each query's box centre to every feature-map position, in image units.

    centres: F x N x 2 (cx, cy) normalised by the (unpadded) image size; image_sizes: F x 2
    (h, w) in pixels. A position (i, j) sits at pixel ((j + 0.5) * stride, (i + 0.5) * stride).
    Returns F x N x 2 x h x w with (x - cx, y - cy), both normalised by the image size, or with
    `pixels` (the published model) (cx - x, cy - y) in input pixels.
    """
    h, w = feature_size
    device, dtype = centres.device, centres.dtype
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * stride
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * stride
    sizes = image_sizes.to(dtype)
    if pixels:
        cx = centres[..., 0] * sizes[:, 1:2]  # F x N
        cy = centres[..., 1] * sizes[:, 0:1]
        dx = cx[..., None, None] - xs[None, None, None, :]  # F x N x 1 x w
        dy = cy[..., None, None] - ys[None, None, :, None]  # F x N x h x 1
    else:
        xs = xs[None, :] / sizes[:, 1:2]  # F x w
        ys = ys[None, :] / sizes[:, 0:1]  # F x h
        dx = xs[:, None, None, :] - centres[..., 0, None, None]  # F x N x 1 x w
        dy = ys[:, None, :, None] - centres[..., 1, None, None]  # F x N x h x 1
    return torch.stack([dx.expand(-1, -1, h, w), dy.expand(-1, -1, h, w)], dim=2)


class DynamicMaskHead(nn.Module):
    """Turns query embeddings into mask logits with per-query dynamic 1x1 convolutions.

    A 3-layer MLP (the controller) emits the weights and biases of NUM_DYNAMIC_LAYERS 1x1
    convolutions (`in_channels + 2 -> channels -> channels -> 1`, ReLU between, nothing after
    the last). Their input is the shared mask features concatenated with the relative
    coordinates of each position to the query's predicted box centre (normalised, or in input
    pixels with `pixel_coordinates`, see `relative_coordinates`).
    """

    def __init__(
        self, query_dim: int, in_channels: int, channels: int, pixel_coordinates: bool = False
    ):
        super().__init__()
        self.pixel_coordinates = pixel_coordinates
        dims = [in_channels + 2] + [channels] * (NUM_DYNAMIC_LAYERS - 1) + [1]
        self.layer_shapes = list(zip(dims[1:], dims[:-1]))  # (out, in) per layer
        num_params = sum(o * i + o for o, i in self.layer_shapes)
        self.controller = MLP(query_dim, query_dim, num_params, 3)
        for layer in self.controller.layers:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        queries: torch.Tensor,
        centres: torch.Tensor,
        mask_features: torch.Tensor,
        stride: int,
        image_sizes: torch.Tensor,
    ) -> torch.Tensor:
        """queries F x N x C, centres F x N x 2 (normalised cx, cy), mask_features F x Cm x h x w
        at `stride`, image_sizes F x 2 (h, w) -> mask logits F x N x h x w."""
        f, n = queries.shape[:2]
        h, w = mask_features.shape[-2:]
        coords = relative_coordinates(
            centres, (h, w), stride, image_sizes, pixels=self.pixel_coordinates
        )
        feats = mask_features[:, None].expand(-1, n, -1, -1, -1)
        x = torch.cat([feats, coords.to(feats.dtype)], dim=2).flatten(3)  # F x N x Cin x hw
        params = self.controller(queries)
        weights, biases = self._split(params)
        for i, (weight, bias) in enumerate(zip(weights, biases)):
            x = weight @ x + bias[..., None]
            if i < len(weights) - 1:
                x = F.relu(x)
        return x.reshape(f, n, h, w)

    def _split(self, params: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Splits F x N x P parameters into per-layer weights (F x N x out x in), biases."""
        sizes = [o * i for o, i in self.layer_shapes] + [o for o, _ in self.layer_shapes]
        chunks = torch.split(params, sizes, dim=-1)
        k = len(self.layer_shapes)
        weights = [c.unflatten(-1, shape) for c, shape in zip(chunks[:k], self.layer_shapes)]
        return weights, list(chunks[k:])
