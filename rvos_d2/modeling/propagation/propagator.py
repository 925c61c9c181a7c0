"""Mask propagation through a video with a space-time memory network (STCN inference).

From an anchor frame with given object masks, the network segments the following frames one by
one (forward pass) and the preceding ones in reverse order (backward pass), each pass with its
own memory: the anchor frame, every `mem_every`-th frame from it, optionally the previous frame
(`include_last`), and at most `max_memory_frames` frames (the least-confident one is replaced).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rvos_d2.modeling.propagation.aggregation import soft_aggregate
from rvos_d2.modeling.propagation.matching import MatchingContext
from rvos_d2.modeling.propagation.memory import MemoryBank, MemoryEntry
from rvos_d2.modeling.propagation.network import SIZE_DIVISIBILITY, STCNNetwork


def pad_to_multiple(x: Tensor, divisor: int = SIZE_DIVISIBILITY) -> tuple[Tensor, tuple]:
    """Zero-pads the last two dims up to multiples of `divisor`, half on each side (the extra
    pixel on the right / bottom); returns the padded tensor and (left, right, top, bottom)."""
    h, w = x.shape[-2:]
    extra_h, extra_w = -h % divisor, -w % divisor
    pad = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
    return F.pad(x, pad), pad


def unpad(x: Tensor, pad: tuple) -> Tensor:
    """Removes the padding added by `pad_to_multiple`."""
    left, right, top, bottom = pad
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


def frame_confidence(probs: Tensor) -> float:
    """Confidence of one frame's distribution (K+1, H, W), background first: the mean winning
    probability over the pixels whose argmax is an object, or the mean background probability
    where no pixel is assigned to an object."""
    top, label = probs.max(dim=0)
    foreground = label > 0
    if foreground.any():
        return top[foreground].mean().item()
    return probs[0].mean().item()


@dataclass
class PropagationResult:
    """Per-frame object probabilities (T, K, H, W) and confidences (T) of a whole video."""

    probs: Tensor
    confidences: Tensor


class _Pass:
    """One propagation direction: segments frames in the order given, updating its memory."""

    def __init__(
        self, propagator: Propagator, anchor: int, image: Tensor, probs: Tensor, pad: tuple
    ):
        self.p = propagator
        self.anchor = anchor
        self.pad = pad
        self.memory = MemoryBank(propagator.max_memory_frames)
        feats = propagator.network.encode_key(image.unsqueeze(0))[0]
        values = propagator.network.encode_value(image, feats.f16, probs[1:])
        self.memory.add(MemoryEntry(anchor, feats.key, values, float("inf"), permanent=True))
        self.reference = (feats.key, probs[1:])  # for CFBI-style matching
        self.previous = self.reference
        self.pending = None  # the last frame segmented, inserted once the next one comes

    def _commit_pending(self) -> None:
        if self.pending is None:
            return
        t, image, feats, probs, confidence = self.pending
        self.pending = None
        is_memory_frame = abs(t - self.anchor) % self.p.mem_every == 0
        if not (is_memory_frame or self.p.include_last):
            return
        values = self.p.network.encode_value(image, feats.f16, probs[1:])
        entry = MemoryEntry(t, feats.key, values, confidence, permanent=False)
        if is_memory_frame:
            self.memory.add(entry)
        else:
            self.memory.set_temporary(entry)

    def step(self, t: int, image: Tensor) -> tuple[Tensor, float]:
        """Segments frame `t` (normalised, padded) -> (K+1, H, W) distribution, confidence."""
        self._commit_pending()
        feats = self.p.network.encode_key(image.unsqueeze(0))[0]
        context = MatchingContext(*self.reference, *self.previous)
        logits = self.p.network.segment(self.memory, feats, context)
        probs = soft_aggregate(torch.sigmoid(logits))
        confidence = frame_confidence(unpad(probs, self.pad))
        self.previous = (feats.key, probs[1:])
        self.pending = (t, image, feats, probs, confidence)
        return probs, confidence


class Propagator:
    """Propagates object masks from an anchor frame to every frame of a video."""

    def __init__(
        self,
        network: STCNNetwork,
        *,
        mem_every: int = 5,
        include_last: bool = False,
        max_memory_frames: int = 0,
    ):
        """
        Args:
            network: an STCN network (its `top_k` is used for memory reads).
            mem_every: every k-th frame (counted from the anchor) enters the memory.
            include_last: also read the previous frame as temporary memory.
            max_memory_frames: memory frames kept per pass (0 = no limit); when full, a new
                memory frame replaces the least-confident one (never the anchor).
        """
        if mem_every < 1:
            raise ValueError(f"mem_every={mem_every}: expected a positive frame count")
        if max_memory_frames < 0:
            raise ValueError(f"max_memory_frames={max_memory_frames}: expected >= 0 (0: no limit)")
        self.network = network
        self.mem_every = mem_every
        self.include_last = include_last
        self.max_memory_frames = max_memory_frames
        # memory of the latest "backward" / "forward" pass (for inspection)
        self.memory_banks: dict[str, MemoryBank] = {}

    @classmethod
    def from_config(cls, cfg, network: STCNNetwork) -> Propagator:
        """A propagator with the MODEL.PROPAGATION schedule."""
        p = cfg.MODEL.PROPAGATION
        return cls(
            network,
            mem_every=p.MEM_EVERY,
            include_last=p.INCLUDE_LAST,
            max_memory_frames=p.MAX_MEMORY_FRAMES,
        )

    def _prepare(self, frame: Tensor, t: int) -> tuple[Tensor, tuple]:
        if frame.dim() != 3 or frame.shape[0] != 3:
            raise ValueError(
                f"frame {t}: expected a 3 x H x W RGB tensor, got {tuple(frame.shape)}"
            )
        return pad_to_multiple(self.network.normalize(frame))

    def _anchor_probs(self, masks: Tensor, size: tuple[int, int], device) -> Tensor:
        if masks.dim() == 2:
            masks = masks.unsqueeze(0)
        if masks.dim() != 3 or masks.shape[0] == 0 or tuple(masks.shape[-2:]) != tuple(size):
            raise ValueError(
                f"anchor masks: expected K x {size[0]} x {size[1]} (K >= 1, the anchor frame's "
                f"size), got {tuple(masks.shape)}"
            )
        masks = masks.to(device, torch.float32)
        if masks.min() < 0 or masks.max() > 1:
            raise ValueError("anchor masks: values must be 0/1 masks or probabilities in [0, 1]")
        return soft_aggregate(pad_to_multiple(masks)[0])

    @torch.no_grad()
    def stream(
        self, frames: Sequence[Tensor] | Iterable[Tensor], anchor: int, masks: Tensor
    ) -> Iterator[tuple[int, Tensor, float]]:
        """Yields (frame index, object probabilities K x H x W, confidence) in frame order.

        `frames`: RGB 3 x H x W tensors (uint8 or 0-255 float), a sequence or any iterable
        (frames after the anchor are read one at a time and not kept). `masks`: K x H x W
        masks or probabilities of the K objects at frame `anchor`. Probabilities are the soft
        aggregation of the network's outputs (the objects and the implicit background sum to
        1); the anchor frame gets the soft aggregation of `masks`. Confidence: see
        `frame_confidence`.
        """
        if anchor < 0:
            raise IndexError(f"anchor index {anchor}: must be >= 0")
        if isinstance(frames, Sequence) and anchor >= len(frames):
            raise IndexError(f"anchor index {anchor}: the video has {len(frames)} frames")
        iterator = iter(frames)
        head: list[Tensor] = []  # frames up to the anchor, kept for the backward pass
        for frame in iterator:
            head.append(frame)
            if len(head) == anchor + 1:
                break
        if len(head) <= anchor:
            raise IndexError(f"anchor index {anchor}: the video has {len(head)} frames")
        image, pad = self._prepare(head[anchor], anchor)
        probs = self._anchor_probs(masks, head[anchor].shape[-2:], image.device)

        backward = _Pass(self, anchor, image, probs, pad)
        self.memory_banks = {"backward": backward.memory}
        earlier: list[tuple[Tensor, float]] = []
        for t in range(anchor - 1, -1, -1):
            frame_probs, confidence = backward.step(t, self._checked(head[t], t, image, pad))
            earlier.append((unpad(frame_probs[1:], pad), confidence))
        del backward
        for t, (frame_probs, confidence) in enumerate(reversed(earlier)):
            yield t, frame_probs, confidence
        del earlier, head[:anchor]
        yield anchor, unpad(probs[1:], pad), frame_confidence(unpad(probs, pad))

        forward = _Pass(self, anchor, image, probs, pad)
        self.memory_banks["forward"] = forward.memory
        for t, frame in enumerate(iterator, start=anchor + 1):
            frame_probs, confidence = forward.step(t, self._checked(frame, t, image, pad))
            yield t, unpad(frame_probs[1:], pad), confidence

    def _checked(self, frame: Tensor, t: int, anchor_image: Tensor, anchor_pad: tuple) -> Tensor:
        image, pad = self._prepare(frame, t)
        if image.shape != anchor_image.shape or pad != anchor_pad:
            raise ValueError(
                f"frame {t}: size {tuple(frame.shape[-2:])} differs from the anchor frame's"
            )
        return image

    def propagate(
        self, frames: Sequence[Tensor] | Iterable[Tensor], anchor: int, masks: Tensor
    ) -> PropagationResult:
        """All frames' probabilities (T, K, H, W) and confidences (T); see `stream`."""
        results = list(self.stream(frames, anchor, masks))
        probs = torch.stack([r[1] for r in results])
        confidences = torch.tensor([r[2] for r in results])
        return PropagationResult(probs, confidences)
