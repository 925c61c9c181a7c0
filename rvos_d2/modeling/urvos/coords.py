"""The coordinate features URVOS concatenates to visual features (Sec. 4.1, footnotes 4-5).

Each grid cell (or frame) is described by where it starts, its centre and where it ends, as
relative coordinates in [-1, 1], plus the inverse of the grid's extent.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["spatial_coords", "spatiotemporal_coords"]


def _cells(index: Tensor, extent: int) -> Tensor:
    """[min, avg, max] in [-1, 1] of cells `index` of a 1-D grid of `extent` cells: ... x 3."""
    start = index.float() / extent
    bounds = torch.stack([start, start + 0.5 / extent, start + 1.0 / extent], dim=-1)
    return bounds * 2 - 1


def spatial_coords(height: int, width: int, device=None) -> Tensor:
    """8 x height x width: h_min, h_avg, h_max, w_min, w_avg, w_max, 1/H, 1/W of every cell."""
    if height < 1 or width < 1:
        raise ValueError(f"spatial_coords: grid size must be positive, got {height} x {width}")
    hs = _cells(torch.arange(height, device=device), height)  # H x 3
    ws = _cells(torch.arange(width, device=device), width)  # W x 3
    return torch.cat(
        [
            hs.T[:, :, None].expand(3, height, width),
            ws.T[:, None, :].expand(3, height, width),
            torch.full((1, height, width), 1.0 / height, device=device),
            torch.full((1, height, width), 1.0 / width, device=device),
        ]
    )


def spatiotemporal_coords(frames: Tensor, duration: int, height: int, width: int) -> Tensor:
    """F x 12 x height x width for frames at indices `frames` (F) of a video of `duration`
    frames: t_min, t_avg, t_max, h_min, h_avg, h_max, w_min, w_avg, w_max, 1/T, 1/H, 1/W."""
    if duration < 1:
        raise ValueError(f"spatiotemporal_coords: duration must be positive, got {duration}")
    if frames.numel() and (frames.min() < 0 or frames.max() >= duration):
        raise ValueError(
            f"spatiotemporal_coords: frame indices {frames.tolist()} not in [0, {duration})"
        )
    space = spatial_coords(height, width, frames.device)
    time = _cells(frames, duration)[:, :, None, None].expand(-1, 3, height, width)
    count = len(frames)
    return torch.cat(
        [
            time,
            space[None, :6].expand(count, -1, -1, -1),
            torch.full((count, 1, height, width), 1.0 / duration, device=frames.device),
            space[None, 6:].expand(count, -1, -1, -1),
        ],
        dim=1,
    )
