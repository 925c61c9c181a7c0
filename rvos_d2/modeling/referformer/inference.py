"""The published ReferFormer's two dataset-specific inference schemes.

Ref-DAVIS17 (`infer_per_window`): the video is cut into windows of TEST.WINDOW frames (36 in the
official script) and each window is decoded as a video of its own, choosing its own query.

A2D-Sentences / JHMDB-Sentences (`infer_annotated_clips`): for every annotated frame a clip of T
frames centred on it is read (indices beyond either end of the video repeat the edge frame); the
backbone sees the whole clip, everything after it only the annotated frame, and every query slot
of that frame is kept with its score. Masks are turned into binary masks the official way: logits
upsampled bilinearly by the mask stride, thresholded at probability 0.5, cropped to the unpadded
frame, resized to the original size by nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "annotated_frames",
    "binary_masks_at_original",
    "centred_clip",
    "infer_annotated_clips",
    "infer_per_window",
]


def centred_clip(frame: int, num_frames: int, length: int) -> tuple[list[int], int]:
    """Sorted frame indices of the `num_frames`-frame clip centred on `frame` in a video of
    `length` frames (edge frames repeated) and the position of `frame` (its first copy)."""
    if not 0 <= frame < length or num_frames < 1:
        raise ValueError(f"centred_clip: frame {frame} of {length}, clip of {num_frames} frames")
    start = frame - num_frames // 2
    clip = sorted(min(max(i, 0), length - 1) for i in range(start, start + num_frames))
    return clip, clip.index(frame)


def binary_masks_at_original(
    logits: torch.Tensor, stride: int, image_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """N x h x w logits at `stride` of a padded frame -> N x H x W bool at the original size."""
    height, width = logits.shape[-2:]
    up = F.interpolate(logits[None], size=(height * stride, width * stride), mode="bilinear")
    binary = (up.sigmoid() > 0.5)[..., : image_size[0], : image_size[1]]
    return F.interpolate(binary.float(), size=tuple(original_size), mode="nearest")[0] > 0.5


def annotated_frames(video: dict[str, Any]) -> list[int]:
    """Positions of the annotated frames of a model input (its `instances`' gt_annotated)."""
    frames = video.get("instances")
    if frames is None:
        raise ValueError(
            f"video {video.get('video_id')}: inference on annotated clips needs the input's "
            "`instances` (gt_annotated per frame): set INPUT.TEST_WITH_GT True"
        )
    return [t for t, inst in enumerate(frames) if bool(inst.gt_annotated[0])]


@torch.no_grad()
def infer_annotated_clips(model: nn.Module, video: dict[str, Any], num_frames: int) -> dict:
    """The output contract of `model` (an RVOSMetaArch whose `predict` takes `frame`) on the
    annotated frames, each from its own clip: pred_masks / scores are the best-scored slot's
    binary mask and score (zero on other frames); query_frames (A), query_scores (A x N) and
    query_masks (A x N x H x W bool) hold every slot of the A annotated frames."""
    frames = video["image"]
    original = (video["height"], video["width"])
    text = model.text_encoder([video["expression"]], model.device)
    masks = torch.zeros(frames.shape[0], *original, device=model.device)
    scores = torch.zeros(frames.shape[0], device=model.device)
    rows, slot_scores, slot_masks = annotated_frames(video), [], []
    for frame in rows:
        clip, position = centred_clip(frame, num_frames, frames.shape[0])
        images = model.preprocess([frames[clip]])
        out = model.predict(images, text, len(clip), all_layers=False, frame=position)
        frame_scores = out["pred_logits"][0, 0].sigmoid()  # N
        frame_masks = binary_masks_at_original(
            out["pred_masks"][0, 0], model.mask_stride, images.image_sizes[0], original
        )
        best = int(frame_scores.argmax())
        masks[frame], scores[frame] = frame_masks[best].float(), frame_scores[best]
        slot_scores.append(frame_scores)
        slot_masks.append(frame_masks)
    num_slots = model.num_queries
    return {
        "pred_masks": masks,
        "scores": scores,
        "query_frames": torch.tensor(rows, dtype=torch.int64),
        "query_scores": torch.stack(slot_scores) if rows else scores.new_zeros(0, num_slots),
        "query_masks": (
            torch.stack(slot_masks) if rows else masks.new_zeros(0, num_slots, *original).bool()
        ),
    }


def infer_per_window(
    infer: Callable[[dict[str, Any]], dict[str, torch.Tensor]], video: dict[str, Any], window: int
) -> dict[str, torch.Tensor]:
    """The output contract of `infer` (a whole-video inference) with each window of `window`
    frames decoded as a video of its own (its own query choice), concatenated in frame order."""
    frames = video["image"]
    parts = [
        infer({**video, "image": frames[start : start + window]})
        for start in range(0, frames.shape[0], window)
    ]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
