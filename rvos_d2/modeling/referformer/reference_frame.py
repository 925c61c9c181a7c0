"""One frame per clip after the backbone: the published ReferFormer's A2D-Sentences training
(the rest of the model and the losses see only the frame each clip was sampled around, the
dataset mapper's `reference_frame`) and its annotated-frame inference (inference.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["keep_clip_frames", "reference_frame_losses", "select_frame"]


def keep_clip_frames(
    features: dict[str, torch.Tensor],
    padding: torch.Tensor,
    sizes: torch.Tensor,
    num_frames: int,
    frame: int | Sequence[int],
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Backbone maps, padding masks and sizes of clips of `num_frames` frames (B*T first)
    reduced to one frame per clip: position `frame` of every clip, or `frame[b]` of clip b."""
    num_clips = len(sizes) // num_frames
    per_clip = [frame] * num_clips if isinstance(frame, int) else list(frame)
    if len(per_clip) != num_clips or not all(0 <= f < num_frames for f in per_clip):
        raise ValueError(
            f"frame={frame}: expected one position in [0, {num_frames}) or one per clip "
            f"({num_clips} clips)"
        )
    keep = torch.tensor([i * num_frames + f for i, f in enumerate(per_clip)], device=sizes.device)
    return {name: f[keep] for name, f in features.items()}, padding[keep], sizes[keep]


def select_frame(target: dict[str, torch.Tensor], frame: int) -> dict[str, torch.Tensor]:
    """One video's targets (valid 1 x T, boxes 1 x T x 4, masks 1 x T x h x w, annotated T)
    restricted to clip position `frame` (T = 1)."""
    return {
        "valid": target["valid"][:, frame : frame + 1],
        "boxes": target["boxes"][:, frame : frame + 1],
        "masks": target["masks"][:, frame : frame + 1],
        "annotated": target["annotated"][frame : frame + 1],
    }


def reference_frame_losses(
    model: nn.Module, batched_inputs: list[dict[str, Any]]
) -> dict[str, torch.Tensor]:
    """Weighted losses of `model` (an RVOSMetaArch whose `predict` takes `frame`) with only the
    reference frame of each training clip decoded and supervised."""
    frames = []
    for video in batched_inputs:
        if "reference_frame" not in video:
            raise KeyError(
                f"video {video.get('video_id')}: MODEL.REFERFORMER.TRAIN_REFERENCE_FRAME_ONLY "
                "needs the training mapper's `reference_frame`"
            )
        frames.append(int(video["reference_frame"]))
    images, text, num_frames = model.training_inputs(batched_inputs)
    outputs = model.predict(images, text, num_frames, all_layers=True, frame=frames)
    targets = model.prepare_targets(batched_inputs, images)
    return model.criterion(outputs, [select_frame(t, f) for t, f in zip(targets, frames)])
