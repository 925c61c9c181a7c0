"""Object tracklets of the top-down method (Liang et al., 2021): a container, tracklet IoU (the
paper's Eq. 3) and greedy tracklet-NMS.

A tracklet is one object's mask in every frame of a video, obtained by propagating a key-frame
candidate forward and backward. Tracklet IoU sums intersections and unions over all frames before
dividing, so a pair that overlaps in a few frames only is not judged a duplicate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Tracklets",
    "build_tracklets",
    "object_confidence",
    "tracklet_iou",
    "tracklet_nms",
    "tracklet_scores",
]

# A float32 matrix product sums 0/1 products exactly while every row holds at most 2^24 pixels.
EXACT_FLOAT32_SUM = 2**24
# Default limit on the elements of the float buffers one time chunk of tracklet_iou allocates.
DEFAULT_CHUNK_ELEMENTS = 2**24


@dataclass
class Tracklets:
    """P tracklets of one T-frame video.

    masks: P x T x H x W, bool masks or probabilities in [0, 1] (any float dtype, often
    low-resolution float16); scores: P; confidence: P x T per-frame propagation confidence;
    key_frames: P, the frame each tracklet was detected in; sources: P, the index of the candidate
    model that detected it.
    """

    masks: Tensor
    scores: Tensor
    confidence: Tensor
    key_frames: Tensor
    sources: Tensor

    def __post_init__(self) -> None:
        if self.masks.dim() != 4:
            raise ValueError(
                f"Tracklets.masks must be P x T x H x W, got {tuple(self.masks.shape)}"
            )
        p, t = self.masks.shape[:2]
        expected = {
            "scores": (p,),
            "confidence": (p, t),
            "key_frames": (p,),
            "sources": (p,),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"Tracklets.{name} must have shape {shape} for {p} tracklets of {t} frames, "
                    f"got {tuple(value.shape)}"
                )

    def __len__(self) -> int:
        return self.masks.shape[0]

    @property
    def num_frames(self) -> int:
        return self.masks.shape[1]

    def __getitem__(self, index: Tensor | Sequence[int] | slice | int) -> Tracklets:
        """The tracklets selected by `index` (an int keeps its tracklet dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long, device=self.masks.device)
        return Tracklets(
            masks=self.masks[index],
            scores=self.scores[index],
            confidence=self.confidence[index],
            key_frames=self.key_frames[index],
            sources=self.sources[index],
        )

    def to(self, device: torch.device | str) -> Tracklets:
        return Tracklets(
            masks=self.masks.to(device),
            scores=self.scores.to(device),
            confidence=self.confidence.to(device),
            key_frames=self.key_frames.to(device),
            sources=self.sources.to(device),
        )

    @staticmethod
    def cat(parts: Sequence[Tracklets]) -> Tracklets:
        """Concatenates tracklet sets of the same video (same T x H x W)."""
        if not parts:
            raise ValueError("Tracklets.cat needs at least one Tracklets")
        return Tracklets(
            masks=torch.cat([p.masks for p in parts]),
            scores=torch.cat([p.scores for p in parts]),
            confidence=torch.cat([p.confidence for p in parts]),
            key_frames=torch.cat([p.key_frames for p in parts]),
            sources=torch.cat([p.sources for p in parts]),
        )


def tracklet_scores(detection_scores: Tensor, confidence: Tensor) -> Tensor:
    """The paper's tracklet score: detection score x propagation confidence averaged over frames
    (detection_scores: P, confidence: P x T)."""
    if confidence.dim() != 2 or detection_scores.shape != confidence.shape[:1]:
        raise ValueError(
            f"tracklet_scores: detection_scores must be P and confidence P x T, got "
            f"{tuple(detection_scores.shape)} and {tuple(confidence.shape)}"
        )
    return detection_scores * confidence.float().mean(dim=1)


def _binary_chunk(masks: Tensor, start: int, stop: int, stride: int, threshold: float) -> Tensor:
    """Frames [start, stop) of P x T x H x W masks as a float32 0/1 matrix P x (frames*h*w),
    subsampled every `stride` pixels."""
    chunk = masks[:, start:stop, ::stride, ::stride]
    binary = chunk if chunk.dtype == torch.bool else chunk > threshold
    return binary.flatten(1).float()


def tracklet_iou(
    masks_a: Tensor,
    masks_b: Tensor | None = None,
    *,
    downsample: int = 1,
    chunk_frames: int | None = None,
    mask_threshold: float = 0.5,
) -> Tensor:
    """Tracklet IoU of every pair (the paper's Eq. 3): sum_t |Mp ∩ Mq| / sum_t |Mp ∪ Mq|.

    Args:
        masks_a: P x T x H x W bool masks or probabilities (binarised at `mask_threshold`).
        masks_b: Q x T x H x W, or None for the IoU of `masks_a` with itself.
        downsample: keep every k-th pixel in each direction (approximate, k^2 times cheaper).
        chunk_frames: frames per matrix product; None picks as many as keep the float buffers
            under 2^24 elements and the sums exact in float32.
        mask_threshold: probabilities above it count as foreground.

    Returns:
        P x Q float32 on the masks' device; a pair that is empty in every frame has IoU 0.
    """
    masks_b = masks_a if masks_b is None else masks_b
    if masks_a.dim() != 4 or masks_b.dim() != 4 or masks_a.shape[1:] != masks_b.shape[1:]:
        raise ValueError(
            "tracklet_iou: masks_a and masks_b must be P x T x H x W with the same T x H x W, got "
            f"{tuple(masks_a.shape)} and {tuple(masks_b.shape)}"
        )
    if downsample < 1:
        raise ValueError(f"tracklet_iou: downsample must be >= 1, got {downsample}")
    if chunk_frames is not None and chunk_frames < 1:
        raise ValueError(f"tracklet_iou: chunk_frames must be >= 1, got {chunk_frames}")
    same = masks_b is masks_a
    num_frames, height, width = masks_a.shape[1:]
    pixels = len(range(0, height, downsample)) * len(range(0, width, downsample))
    if chunk_frames is None:
        rows = masks_a.shape[0] + (0 if same else masks_b.shape[0])
        pixels = max(pixels, 1)
        chunk_frames = min(
            DEFAULT_CHUNK_ELEMENTS // (max(rows, 1) * pixels), EXACT_FLOAT32_SUM // pixels
        )
    chunk_frames = max(1, chunk_frames)
    device = masks_a.device
    inter = torch.zeros(masks_a.shape[0], masks_b.shape[0], dtype=torch.float64, device=device)
    area_a = torch.zeros(masks_a.shape[0], dtype=torch.float64, device=device)
    area_b = area_a if same else torch.zeros(masks_b.shape[0], dtype=torch.float64, device=device)
    for start in range(0, num_frames, chunk_frames):
        stop = min(start + chunk_frames, num_frames)
        a = _binary_chunk(masks_a, start, stop, downsample, mask_threshold)
        b = a if same else _binary_chunk(masks_b, start, stop, downsample, mask_threshold)
        inter += a @ b.T
        area_a += a.sum(dim=1)
        if not same:
            area_b += b.sum(dim=1)
    union = area_a[:, None] + area_b[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
    return iou.float()


def tracklet_nms(
    tracklets: Tracklets,
    iou_threshold: float,
    max_keep: int,
    *,
    downsample: int = 1,
    chunk_frames: int | None = None,
) -> Tensor:
    """Greedy tracklet-NMS: visits tracklets by decreasing score, keeps one unless its tracklet
    IoU with an already kept one exceeds `iou_threshold`, and stops after `max_keep` (the paper's
    P = 10). Returns the kept indices (long, on the masks' device), best score first."""
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"tracklet_nms: iou_threshold must be in [0, 1], got {iou_threshold}")
    if max_keep < 1:
        raise ValueError(f"tracklet_nms: max_keep must be >= 1, got {max_keep}")
    device = tracklets.masks.device
    if len(tracklets) == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    order = torch.argsort(tracklets.scores.detach().float().cpu(), descending=True, stable=True)
    iou = tracklet_iou(tracklets.masks, downsample=downsample, chunk_frames=chunk_frames).cpu()
    iou = iou[order][:, order]
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) == max_keep:
            break
        suppressed |= iou[i] > iou_threshold
    return order[keep].to(device)


class MaskPropagator(Protocol):
    """What tracklet construction needs of a propagator (rvos_d2.modeling.propagation)."""

    def stream(
        self, frames: Sequence[Tensor] | Iterable[Tensor], anchor: int, masks: Tensor
    ) -> Iterator[tuple[int, Tensor, float]]: ...


def object_confidence(probs: Tensor) -> Tensor:
    """Per-object propagation confidence in one frame (K x H x W probabilities; objects and the
    implicit background sum to 1): the mean probability over the pixels an object wins, or one
    minus its highest probability where it wins none (confidently absent)."""
    background = (1 - probs.sum(dim=0, keepdim=True)).clamp(min=0)
    label = torch.cat([background, probs]).argmax(dim=0)
    objects = torch.arange(1, probs.shape[0] + 1, device=probs.device)
    wins = label[None] == objects[:, None, None]
    count = wins.flatten(1).sum(dim=1)
    mean = (probs * wins).flatten(1).sum(dim=1) / count.clamp(min=1)
    return torch.where(count > 0, mean, 1 - probs.flatten(1).amax(dim=1))


def build_tracklets(
    propagator: MaskPropagator,
    frames: Sequence[Tensor],
    masks: Tensor,
    detection_scores: Tensor,
    key_frames: Tensor,
    sources: Tensor,
    *,
    stride: int,
    jointly: bool = False,
) -> Tracklets:
    """Propagates key-frame candidates forward and backward through the whole video (the paper's
    Eq. 2) into tracklets scored by detection score x mean propagation confidence.

    Args:
        propagator: yields each frame's K x H x W object probabilities (e.g. `Propagator`).
        frames: the T RGB frames (3 x H x W) given to the propagator.
        masks: N x H x W candidate masks; candidate n lies on frame `key_frames[n]`.
        detection_scores, key_frames, sources: N each.
        stride: tracklet masks are kept as float16 probabilities at 1 / stride of the frame size
            (area averages), so memory grows with T x H x W / stride^2 per tracklet.
        jointly: propagate the candidates of one key frame together (one pass per key frame,
            competing for pixels) instead of one pass per candidate as in the paper.
    """
    num = masks.shape[0]
    if not detection_scores.shape == key_frames.shape == sources.shape == (num,):
        raise ValueError(
            "build_tracklets: detection_scores, key_frames and sources must hold one entry per "
            f"candidate mask ({num})"
        )
    if stride < 1:
        raise ValueError(f"build_tracklets: stride must be >= 1, got {stride}")
    num_frames, (height, width) = len(frames), masks.shape[-2:]
    size = (math.ceil(height / stride), math.ceil(width / stride))
    device = masks.device
    probs = torch.zeros(num, num_frames, *size, dtype=torch.float16, device=device)
    confidence = torch.zeros(num, num_frames, device=device)
    if jointly:
        groups = [(key_frames == t).nonzero()[:, 0] for t in key_frames.unique().tolist()]
    else:
        groups = [torch.tensor([n], device=device) for n in range(num)]
    for group in groups:
        anchor = int(key_frames[group[0]])
        for t, frame_probs, _ in propagator.stream(frames, anchor, masks[group]):
            frame_probs = frame_probs.to(device)
            small = F.interpolate(frame_probs[None].float(), size=size, mode="area")[0]
            probs[group, t] = small.half()
            confidence[group, t] = object_confidence(frame_probs.float())
    return Tracklets(
        masks=probs,
        scores=tracklet_scores(detection_scores.to(device).float(), confidence),
        confidence=confidence,
        key_frames=key_frames,
        sources=sources,
    )
