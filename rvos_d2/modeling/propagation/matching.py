"""CFBI-style foreground/background matching (Yang et al., ECCV 2020), a lighter variant.

For each object, every query pixel gets four distances: to the nearest foreground and nearest
background pixel of the reference (anchor) frame over the whole frame (global matching), and to
the nearest foreground and background pixel of the previous frame within a window around it
(local matching). CFBI's distance 1 - 2 / (1 + exp(|e_p - e_q|^2 + b)) is used with one learned
bias for foreground and one for background. Lighter than CFBI: the pixel embeddings are the
memory keys (stride 16, no separate embedding head), local matching uses one window radius, and
the maps join the STCN decoder's input instead of CFBI's collaborative ensembler.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NO_MATCH = 1.0  # distance where an object has no foreground (or background) pixel to match


@dataclass
class MatchingContext:
    """Reference and previous frames' keys (C, h, w) and object probabilities (K, h, w)."""

    reference_key: Tensor
    reference_masks: Tensor
    previous_key: Tensor
    previous_masks: Tensor


def downsample_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """K x H x W probabilities -> K x h x w (area averages)."""
    return F.adaptive_avg_pool2d(masks.unsqueeze(0), size)[0]


class FgBgMatching(nn.Module):
    """Four matching maps per object (global fg/bg to the reference, local fg/bg to the
    previous frame) -> K x 4 x h x w, all in [0, 1)."""

    num_maps = 4

    def __init__(self, local_radius: int):
        super().__init__()
        if local_radius < 0:
            raise ValueError(f"local_radius={local_radius}: expected >= 0")
        self.local_radius = local_radius
        self.bias = nn.Parameter(torch.zeros(2))  # foreground, background

    def _distance(self, squared: Tensor, foreground: bool) -> Tensor:
        bias = self.bias[0] if foreground else self.bias[1]
        return 1 - 2 / (1 + torch.exp((squared + bias).clamp(max=50)))

    def global_maps(self, query: Tensor, key: Tensor, masks: Tensor) -> Tensor:
        """query, key (C, h, w) and masks (K, h', w') -> K x 2 x h x w (fg, bg) distances."""
        q, k = query.flatten(1), key.flatten(1)
        squared = (k.pow(2).sum(0)[:, None] + q.pow(2).sum(0)[None] - 2 * k.t() @ q).clamp(min=0)
        inside = (masks.flatten(1) > 0.5)[:, :, None]  # K x N x 1
        maps = []
        for fg in (True, False):
            d = self._distance(squared, fg)[None]  # 1 x N x P
            selected = inside if fg else ~inside
            maps.append(torch.where(selected, d, torch.full_like(d, NO_MATCH)).amin(1))
        return torch.stack(maps, 1).view(masks.shape[0], 2, *query.shape[-2:])

    def local_maps(self, query: Tensor, key: Tensor, masks: Tensor) -> Tensor:
        """As `global_maps`, each query pixel matched within the window of `local_radius`."""
        c, h, w = query.shape
        size = 2 * self.local_radius + 1
        patches = F.unfold(key[None], size, padding=self.local_radius).view(c, -1, h * w)
        valid = F.unfold(torch.ones(1, 1, h, w, device=key.device), size, padding=self.local_radius)
        squared = (patches - query.view(c, 1, h * w)).pow(2).sum(0)  # window x P
        window_masks = F.unfold(masks[:, None], size, padding=self.local_radius)  # K x window x P
        inside = window_masks > 0.5
        outside = (~inside) & (valid > 0.5)
        maps = []
        for fg, selected in ((True, inside), (False, outside)):
            d = self._distance(squared, fg)[None]
            maps.append(torch.where(selected, d, torch.full_like(d, NO_MATCH)).amin(1))
        return torch.stack(maps, 1).view(masks.shape[0], 2, h, w)

    def forward(self, query_key: Tensor, context: MatchingContext) -> Tensor:
        size = tuple(query_key.shape[-2:])
        reference = downsample_masks(context.reference_masks, size)
        previous = downsample_masks(context.previous_masks, size)
        return torch.cat(
            [
                self.global_maps(query_key, context.reference_key, reference),
                self.local_maps(query_key, context.previous_key, previous),
            ],
            dim=1,
        )
