"""The one builder of RVOS model inputs, shared by the dataset mapper, the demo and the tests.

A model input is a dict (see rvos_d2.modeling.meta_arch.base for what models read):
`image` T x 3 x H x W uint8 frames as the model expects them (resized, INPUT.FORMAT order),
`expression`, the original `height` / `width` that outputs are resized to, `frame_ids`, and for
training or evaluation with ground truth `instances`: one detectron2 Instances per frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from detectron2.structures import BitMasks, Instances

__all__ = ["build_model_input", "frame_instances"]


def frame_instances(mask: np.ndarray | None, annotated: bool, image_size: tuple) -> Instances:
    """One frame's target: gt_masks, gt_boxes (from the mask; zeros when empty), gt_classes [0],
    gt_valid (target visible) and gt_annotated; an unannotated frame gets an empty mask."""
    if mask is None:
        mask = np.zeros(image_size, dtype=bool)
    instances = Instances(image_size)
    bitmasks = BitMasks(torch.from_numpy(np.ascontiguousarray(mask))[None])
    instances.gt_masks = bitmasks
    instances.gt_boxes = bitmasks.get_bounding_boxes()
    instances.gt_classes = torch.zeros(1, dtype=torch.int64)
    instances.gt_valid = torch.tensor([bool(mask.any())])
    instances.gt_annotated = torch.tensor([annotated])
    return instances


def build_model_input(
    frames: Sequence[np.ndarray],
    expression: str,
    *,
    height: int,
    width: int,
    frame_ids: Sequence[int] | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
    annotated: Sequence[bool] | None = None,
    **meta: Any,
) -> dict[str, Any]:
    """Model input from H x W x 3 uint8 frames (already resized) and a sentence.

    With `masks` (H x W bool per frame, None = unannotated) the input carries `instances`;
    `annotated` defaults to "every frame with a mask". `meta` (video_id, exp_id, file_names,
    ...) is copied as it is.
    """
    if not frames:
        raise ValueError("a model input needs at least one frame")
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError(f"empty or missing expression ({expression!r})")
    frame_ids = list(range(len(frames))) if frame_ids is None else list(frame_ids)
    if len(frame_ids) != len(frames):
        raise ValueError(f"{len(frame_ids)} frame ids for {len(frames)} frames")
    output = {
        "image": torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous(),
        "expression": expression.strip(),
        "frame_ids": frame_ids,
        "height": height,
        "width": width,
        **meta,
    }
    if masks is not None:
        if len(masks) != len(frames):
            raise ValueError(f"{len(masks)} masks for {len(frames)} frames")
        if annotated is None:
            annotated = [m is not None for m in masks]
        image_size = frames[0].shape[:2]
        output["instances"] = [frame_instances(m, a, image_size) for m, a in zip(masks, annotated)]
    return output
