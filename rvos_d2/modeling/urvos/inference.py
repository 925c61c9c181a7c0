"""What URVOS's two-stage inference keeps (Sec. 4.1, "Inference"): per-frame confidences, a
memory of at most T frames, and the frames with their current mask logits, spilled to a
temporary file so that memory stays bounded for any video length."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["SCHEMES", "FrameStore", "MemoryBank", "frame_confidence", "propagation_orders"]

# inference schemes (Table 5): anchor choice, directions and memory replacement of stage 2
SCHEMES = ("anchor", "anchor_previous", "forward")


def frame_confidence(logits: Tensor) -> Tensor:
    """Confidence of each frame's mask from its ... x h x w logits: the mean foreground
    probability of the pixels predicted foreground (probability > 0.5), 0 without any."""
    probs = logits.sigmoid().flatten(-2)
    foreground = probs > 0.5
    total = (probs * foreground).sum(-1)
    return total / foreground.sum(-1).clamp(min=1)


def propagation_orders(scheme: str, anchor: int, length: int) -> list[range]:
    """The frames stage 2 updates, in order, from `anchor` of a `length`-frame video: to the
    end, then back to the start ("forward": only to the end)."""
    if scheme not in SCHEMES:
        raise ValueError(f"MODEL.URVOS.INFERENCE_SCHEME={scheme!r}: choose among {SCHEMES}")
    if not 0 <= anchor < length:
        raise ValueError(f"anchor {anchor} is not a frame of a {length}-frame video")
    orders = [range(anchor + 1, length)]
    if scheme != "forward":
        orders.append(range(anchor - 1, -1, -1))
    return orders


@dataclass
class MemoryBank:
    """At most `capacity` memory frames with their key and value maps. A frame added to a full
    memory replaces the least confident one (`replace` = "confidence", the paper's) or the
    oldest one ("previous": the previous `capacity` frames)."""

    capacity: int
    replace: str = "confidence"
    indices: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)

    def __post_init__(self):
        if self.capacity < 1:
            raise ValueError(f"MODEL.URVOS.MEMORY_FRAMES must be >= 1, got {self.capacity}")
        if self.replace not in ("confidence", "previous"):
            raise ValueError(f"MemoryBank: replace={self.replace!r}, not confidence / previous")

    def __len__(self) -> int:
        return len(self.indices)

    def add(self, index: int, confidence: float, key: Tensor, value: Tensor) -> None:
        """Stores frame `index` with its key and value (dim x h x w each)."""
        if len(self) >= self.capacity:
            slot = int(np.argmin(self.confidences)) if self.replace == "confidence" else 0
            for items in self._lists():
                del items[slot]
        for items, item in zip(self._lists(), (index, float(confidence), key, value)):
            items.append(item)

    def _lists(self) -> tuple[list, ...]:
        return self.indices, self.confidences, self.keys, self.values

    def stacked(self) -> tuple[Tensor, Tensor]:
        """Keys and values of the stored frames, M x dim x h x w each."""
        return torch.stack(self.keys), torch.stack(self.values)


class FrameStore:
    """A video's uint8 frames (3 x H x W) and their mask logits (h x w, float32) in a
    temporary file with one fixed-size record per frame; use as a context manager."""

    def __init__(self):
        self._file = tempfile.TemporaryFile()
        self._length = 0
        self.frame_shape: tuple[int, ...] = ()
        self.logits_shape: tuple[int, ...] = ()

    def __enter__(self) -> FrameStore:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def __len__(self) -> int:
        return self._length

    @property
    def _frame_bytes(self) -> int:
        return math.prod(self.frame_shape)

    @property
    def _record_bytes(self) -> int:
        return self._frame_bytes + 4 * math.prod(self.logits_shape)

    def append(self, frames: Tensor, logits: Tensor) -> None:
        """Appends t frames (t x 3 x H x W uint8) and their logits (t x h x w)."""
        if not self._length:
            self.frame_shape, self.logits_shape = tuple(frames.shape[1:]), tuple(logits.shape[1:])
        if (
            tuple(frames.shape[1:]) != self.frame_shape
            or tuple(logits.shape[1:]) != self.logits_shape
        ):
            raise ValueError(
                f"FrameStore: frames {tuple(frames.shape[1:])} / logits {tuple(logits.shape[1:])} "
                f"differ from the video's first ones {self.frame_shape} / {self.logits_shape}"
            )
        self._file.seek(self._length * self._record_bytes)
        for frame, logit in zip(frames, logits):
            self._file.write(frame.to(torch.uint8).cpu().numpy().tobytes())
            self._file.write(logit.float().cpu().numpy().tobytes())
        self._length += len(frames)

    def frame(self, index: int) -> Tensor:
        """Frame `index`, 3 x H x W uint8."""
        self._file.seek(self._offset(index))
        data = np.frombuffer(self._file.read(self._frame_bytes), dtype=np.uint8)
        return torch.from_numpy(data.reshape(self.frame_shape).copy())

    def logits(self, index: int) -> Tensor:
        """The current mask logits of frame `index`, h x w float32."""
        self._file.seek(self._offset(index) + self._frame_bytes)
        data = np.frombuffer(self._file.read(self._record_bytes - self._frame_bytes), np.float32)
        return torch.from_numpy(data.reshape(self.logits_shape).copy())

    def write_logits(self, index: int, logits: Tensor) -> None:
        """Replaces the mask logits of frame `index`."""
        self._file.seek(self._offset(index) + self._frame_bytes)
        self._file.write(logits.float().cpu().numpy().tobytes())

    def _offset(self, index: int) -> int:
        if not 0 <= index < self._length:
            raise IndexError(f"FrameStore: frame {index} of {self._length}")
        return index * self._record_bytes
