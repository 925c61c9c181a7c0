"""Space-time memory: L2-similarity affinity, top-k softmax readout and a bounded memory bank."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def l2_affinity(memory_keys: Tensor, query_keys: Tensor) -> Tensor:
    """Negative squared L2 distance without the query's own norm, scaled by 1/sqrt(C):
    (2 m.q - |m|^2) / sqrt(C), for memory keys (C, N) and query keys (C, P) -> (N, P)."""
    scale = math.sqrt(memory_keys.shape[0])
    memory_sq = memory_keys.pow(2).sum(0).unsqueeze(1)
    return (2 * memory_keys.transpose(0, 1) @ query_keys - memory_sq) / scale


def topk_softmax(affinity: Tensor, top_k: int | None) -> Tensor:
    """Softmax over the memory axis (dim 0) restricted to the `top_k` largest entries per query
    (the others are exactly 0); `top_k` None or >= the memory size: a full softmax."""
    if top_k is None or top_k >= affinity.shape[0]:
        return torch.softmax(affinity, dim=0)
    values, indices = torch.topk(affinity, k=top_k, dim=0)
    weights = torch.softmax(values, dim=0)
    return torch.zeros_like(affinity).scatter_(0, indices, weights)


def read_memory(
    memory_keys: Tensor, memory_values: Tensor, query_key: Tensor, top_k: int | None
) -> Tensor:
    """Affinity-weighted memory readout, one per object with a shared affinity.

    memory_keys (C_k, N), memory_values (K, C_v, N), query_key (C_k, H, W) -> (K, C_v, H, W).
    """
    if memory_keys.shape[-1] == 0:
        raise ValueError("memory read: the memory holds no frame (add the anchor frame first)")
    height, width = query_key.shape[-2:]
    weights = topk_softmax(l2_affinity(memory_keys, query_key.flatten(1)), top_k)
    readout = memory_values @ weights
    return readout.view(*memory_values.shape[:2], height, width)


@dataclass
class MemoryEntry:
    """One memory frame: its key (C_k, h, w), values (K, C_v, h, w) and confidence."""

    frame: int
    key: Tensor
    values: Tensor
    confidence: float
    permanent: bool  # the anchor frame: never replaced


class MemoryBank:
    """Memory frames of one propagation pass, concatenated in insertion order for reading.

    With `max_frames` > 0 the bank holds at most that many frames: a new frame replaces the
    least-confident non-anchor frame (URVOS' policy). An optional temporary entry (the last
    frame, STCN's `include_last`) is read after the others and dropped at the next insertion.
    """

    def __init__(self, max_frames: int = 0):
        if max_frames < 0:
            raise ValueError(f"max_frames={max_frames}: expected 0 (no limit) or a positive count")
        self.max_frames = max_frames
        self.entries: list[MemoryEntry] = []
        self.temporary: MemoryEntry | None = None
        self._cache: tuple[Tensor, Tensor] | None = None

    def __len__(self) -> int:
        return len(self.entries) + (self.temporary is not None)

    @property
    def frames(self) -> list[int]:
        """Frame indices read by the next query, in reading order."""
        temp = [self.temporary.frame] if self.temporary is not None else []
        return [e.frame for e in self.entries] + temp

    @property
    def num_elements(self) -> int:
        """Numbers stored in the memory's keys and values (temporary entry included)."""
        entries = self.entries + ([self.temporary] if self.temporary is not None else [])
        return sum(e.key.numel() + e.values.numel() for e in entries)

    def add(self, entry: MemoryEntry) -> None:
        """Inserts a memory frame (replacing the least-confident one when full)."""
        self.temporary = None
        self._cache = None
        if self.max_frames and len(self.entries) >= self.max_frames:
            candidates = [i for i, e in enumerate(self.entries) if not e.permanent]
            if not candidates:
                return  # only anchor frames fit: keep them
            victim = min(candidates, key=lambda i: self.entries[i].confidence)
            del self.entries[victim]
        self.entries.append(entry)

    def set_temporary(self, entry: MemoryEntry) -> None:
        """Makes `entry` the temporary last-frame memory (replacing the previous one)."""
        self.temporary = entry

    def read(self, query_key: Tensor, top_k: int | None) -> Tensor:
        """Readout (K, C_v, H, W) for a query key (C_k, H, W)."""
        if not self.entries:
            raise ValueError("memory read: the memory holds no frame (add the anchor frame first)")
        if self._cache is None:
            keys = torch.cat([e.key.flatten(1) for e in self.entries], dim=1)
            values = torch.cat([e.values.flatten(2) for e in self.entries], dim=2)
            self._cache = (keys, values)
        keys, values = self._cache
        if self.temporary is not None:
            keys = torch.cat([keys, self.temporary.key.flatten(1)], dim=1)
            values = torch.cat([values, self.temporary.values.flatten(2)], dim=2)
        return read_memory(keys, values, query_key, top_k)
