"""Turns one RVOS dataset dict (a video and an expression) into one model input.

Training samples a clip of INPUT.SAMPLING_FRAME_NUM frames around a reference frame and augments
it with one set of random parameters (rvos_d2.data.transforms); inference gives every
INPUT.TEST_FRAME_STRIDE-th frame, only resized. Only the frames and masks used are read.

Clip sampling rules:
- The reference frame is an annotated frame; up to INPUT.SAMPLING_REFERENCE_TRIES random annotated
  frames are tried to find one where the target is visible (else the first one tried is used).
- The other frames are drawn without replacement within +-INPUT.SAMPLING_FRAME_RANGE of it; when
  that window holds too few frames (video ends, small range), the nearest frames outside it fill
  the clip. A video shorter than the clip gives every frame once plus random repeats (sorted), so
  a one-frame video becomes T copies of its frame.
- Image datasets (`is_image: True`) become a pseudo-video: T copies of the image, each with its
  own random affine (INPUT.PSEUDO_VIDEO), applied identically to the image and its mask.

Per-frame targets (`instances[t]`, one row): gt_masks, gt_boxes (from the augmented mask; zeros
when empty), gt_classes [0], gt_valid (target visible in the augmented frame) and gt_annotated.
A frame without annotation (sparse A2D-style labels) gets an empty mask, gt_valid False and
gt_annotated False: it carries no supervision and losses must skip it, whereas gt_annotated True
with gt_valid False means the target is known to be absent. A training input also carries
`reference_frame`, the clip position of its reference frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rvos_d2.data.build import DATASET_MAPPER_REGISTRY
from rvos_d2.data.mask_io import load_target_mask
from rvos_d2.data.model_input import build_model_input
from rvos_d2.data.transforms import (
    RandomAffine,
    augment_clip,
    build_clip_augmentations,
    build_pseudo_video_affine,
    has_horizontal_flip,
    make_pseudo_video,
    swap_left_right,
)
from rvos_d2.data.video_frames import VideoFrames, check_image_format

from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T


def sample_clip_indices(
    reference: int, length: int, num_frames: int, frame_range: int
) -> list[int]:
    """Sorted frame indices of a training clip around `reference` (rules in the module doc)."""
    if length < num_frames:
        repeats = np.random.choice(length, num_frames - length, replace=True)
        return sorted(list(range(length)) + repeats.tolist())
    low, high = max(0, reference - frame_range), min(length - 1, reference + frame_range)
    window = [i for i in range(low, high + 1) if i != reference]
    if len(window) >= num_frames - 1:
        others = np.random.choice(window, num_frames - 1, replace=False).tolist()
    else:
        outside = [i for i in range(length) if i < low or i > high]
        outside.sort(key=lambda i: abs(i - reference))
        others = window + outside[: num_frames - 1 - len(window)]
    return sorted([reference] + others)


def _describe(dataset_dict: dict[str, Any]) -> str:
    return (
        f"{dataset_dict.get('dataset_name', '<dataset>')} video "
        f"{dataset_dict.get('video_id')!r} expression {dataset_dict.get('exp_id')!r}"
    )


class _VideoReader(VideoFrames):
    """Frames (cached: the reference search may read them first) and target masks on demand."""

    def __init__(self, dataset_dict: dict[str, Any], image_format: str, label: str):
        super().__init__(dataset_dict, image_format, label)
        self._frames: dict[int, np.ndarray] = {}
        self._masks: dict[int, np.ndarray | None] = {}

    def frame(self, idx: int) -> np.ndarray:
        if idx not in self._frames:
            self._frames[idx] = super().frame(idx)
        return self._frames[idx]

    def mask(self, idx: int) -> np.ndarray | None:
        if idx not in self._masks:
            if self.size is None:
                self.frame(idx)
            sized = {**self.dict, "height": self.size[0], "width": self.size[1]}
            self._masks[idx] = load_target_mask(sized, idx)
        return self._masks[idx]


@DATASET_MAPPER_REGISTRY.register()
class RVOSDatasetMapper:
    """Dataset dict -> model input dict (image T x 3 x H x W uint8, expression, instances, ...)."""

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: list[T.Augmentation],
        image_format: str = "RGB",
        sampling_frame_num: int = 5,
        sampling_frame_range: int = 10,
        sampling_reference_tries: int = 3,
        pseudo_video_affine: RandomAffine | None = None,
        test_frame_stride: int = 1,
        test_with_gt: bool = False,
    ):
        check_image_format("RVOSDatasetMapper", image_format)
        if sampling_frame_num < 1 or sampling_frame_range < 0 or sampling_reference_tries < 1:
            raise ValueError(
                "RVOSDatasetMapper needs sampling_frame_num >= 1, sampling_frame_range >= 0, "
                f"sampling_reference_tries >= 1; got {sampling_frame_num}, "
                f"{sampling_frame_range}, {sampling_reference_tries}"
            )
        if test_frame_stride < 1:
            raise ValueError(
                f"RVOSDatasetMapper: test_frame_stride must be >= 1, got {test_frame_stride}"
            )
        self.is_train = is_train
        self.augmentations = list(augmentations)
        self.image_format = image_format
        self.sampling_frame_num = sampling_frame_num
        self.sampling_frame_range = sampling_frame_range
        self.sampling_reference_tries = sampling_reference_tries
        self.pseudo_video_affine = (
            RandomAffine() if pseudo_video_affine is None else pseudo_video_affine
        )
        self.test_frame_stride = test_frame_stride
        self.test_with_gt = test_with_gt

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict[str, Any]:
        return {
            "is_train": is_train,
            "augmentations": build_clip_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "sampling_frame_num": cfg.INPUT.SAMPLING_FRAME_NUM,
            "sampling_frame_range": cfg.INPUT.SAMPLING_FRAME_RANGE,
            "sampling_reference_tries": cfg.INPUT.SAMPLING_REFERENCE_TRIES,
            "pseudo_video_affine": build_pseudo_video_affine(cfg),
            "test_frame_stride": cfg.INPUT.TEST_FRAME_STRIDE,
            "test_with_gt": cfg.INPUT.TEST_WITH_GT,
        }

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        label = _describe(dataset_dict)
        expression = dataset_dict.get("expression")
        if not isinstance(expression, str) or not expression.strip():
            raise ValueError(f"{label}: empty or missing expression ({expression!r})")
        reader = _VideoReader(dataset_dict, self.image_format, label)
        annotations = dataset_dict.get("mask_annotations")
        if annotations is not None and len(annotations) != len(dataset_dict["file_names"]):
            raise ValueError(
                f"{label}: {len(annotations)} mask_annotations for "
                f"{len(dataset_dict['file_names'])} frames"
            )
        meta = {}
        if self.is_train:
            frame_ids, frames, masks, annotated, reference = self._training_clip(
                dataset_dict, reader, label
            )
            meta["reference_frame"] = frame_ids.index(reference)
        else:
            frame_ids = list(range(0, len(dataset_dict["file_names"]), self.test_frame_stride))
            frames = [reader.frame(i) for i in frame_ids]
            with_gt = self.test_with_gt and bool(dataset_dict.get("has_masks"))
            annotated = [reader.mask(i) is not None for i in frame_ids] if with_gt else None
            masks = [reader.mask(i) for i in frame_ids] if with_gt else [None] * len(frame_ids)
        frames, masks, transform = augment_clip(self.augmentations, frames, masks)
        expression = expression.strip()
        if has_horizontal_flip(transform):
            expression = swap_left_right(expression)

        height, width = reader.size
        return build_model_input(
            frames,
            expression,
            height=height,
            width=width,
            frame_ids=frame_ids,
            masks=None if annotated is None else masks,
            annotated=annotated,
            file_names=[dataset_dict["file_names"][i] for i in frame_ids],
            video_id=dataset_dict.get("video_id"),
            exp_id=dataset_dict.get("exp_id"),
            dataset_name=dataset_dict.get("dataset_name"),
            **meta,
        )

    def _training_clip(
        self, dataset_dict: dict[str, Any], reader: _VideoReader, label: str
    ) -> tuple[list[int], list[np.ndarray], list[np.ndarray | None], list[bool], int]:
        """Frame ids, frames, masks (None = unannotated), annotated flags and the reference frame
        id of one clip."""
        num_frames = len(dataset_dict["file_names"])
        annotations = dataset_dict.get("mask_annotations")
        if not dataset_dict.get("has_masks") or annotations is None:
            raise ValueError(f"{label}: training needs target masks but the dict has none")
        annotated_ids = [i for i, ann in enumerate(annotations) if ann is not None]
        if not annotated_ids:
            raise ValueError(f"{label}: no annotated frame to train on")
        clip_len = self.sampling_frame_num

        if dataset_dict.get("is_image"):
            mask = reader.mask(annotated_ids[0])
            frames, masks = make_pseudo_video(
                reader.frame(annotated_ids[0]), mask, clip_len, self.pseudo_video_affine
            )
            return [annotated_ids[0]] * clip_len, frames, masks, [True] * clip_len, annotated_ids[0]

        candidates = np.random.permutation(annotated_ids)[: self.sampling_reference_tries]
        reference = next((int(i) for i in candidates if reader.mask(int(i)).any()), None)
        if reference is None:
            reference = int(candidates[0])
        frame_ids = sample_clip_indices(reference, num_frames, clip_len, self.sampling_frame_range)
        frames = [reader.frame(i) for i in frame_ids]
        masks = [reader.mask(i) for i in frame_ids]
        annotated = [annotations[i] is not None for i in frame_ids]
        return frame_ids, frames, masks, annotated, reference
