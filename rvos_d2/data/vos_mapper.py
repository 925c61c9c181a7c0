"""Turns one semi-supervised VOS dataset dict (a video, its objects) into one model input.

Training (STCN-style): a clip of INPUT.SAMPLING_FRAME_NUM frames in temporal order whose
consecutive frames are at most INPUT.VOS.MAX_JUMP dataset frames apart, placed uniformly in the
video and played backwards with probability INPUT.VOS.REVERSE_PROB. Up to INPUT.VOS.SAMPLING_TRIES
clips are drawn until the first one shows an object; then one set of augmentations
(rvos_d2.data.transforms, cropped to keep part of that first frame's objects) is applied to
every frame and id map, and up to INPUT.VOS.MAX_OBJECTS objects visible in the augmented first
frame are drawn at random. A clip without any (after all tries) keeps one object of the video,
absent from its first frame, as STCN keeps an empty target. Image dicts (`is_image`) become
pseudo-videos, one random affine per copy.
    {"image": T x 3 x H x W uint8, "gt_masks": T x K x H x W uint8 (0/1), "obj_ids": [K],
     "frame_ids": [T], "height", "width" (original size: detectron2's loader groups by aspect
     ratio), "video_id", "dataset_name"}
Inference: every frame, resized by ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST),
with each object's reference mask from its first annotated frame:
    {"image": N x 3 x H x W uint8, "height", "width" (original size), "file_names", "frame_ids",
     "video_id", "dataset_name", "obj_ids": [K], "given_masks": K x H x W uint8 (resized),
     "given_frames": [K] (frame index of each reference mask)}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rvos_d2.data.build import DATASET_MAPPER_REGISTRY
from rvos_d2.data.datasets.vos import VOID_ID, load_id_map
from rvos_d2.data.transforms import (
    RandomAffine,
    augment_clip,
    build_clip_augmentations,
    build_pseudo_video_affine,
    make_pseudo_video,
)
from rvos_d2.data.video_frames import VideoFrames, check_image_format

from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T


def sample_vos_clip(length: int, num_frames: int, max_jump: int) -> list[int]:
    """Frame indices in temporal order whose consecutive gaps are uniform in [1, jump].

    jump is `max_jump`, lowered when the video is too short for `num_frames` such gaps; the
    clip's start is uniform over the positions that fit. A video shorter than the clip gives
    every frame once plus sorted random repeats.
    """
    if length < num_frames:
        return sorted(
            list(range(length)) + np.random.randint(0, length, num_frames - length).tolist()
        )
    jump = max(1, min(max_jump, (length - 1) // max(1, num_frames - 1)))
    gaps = np.random.randint(1, jump + 1, size=num_frames - 1)
    start = np.random.randint(0, length - int(gaps.sum()))
    return (start + np.concatenate([[0], np.cumsum(gaps)])).astype(int).tolist()


def _objects_in(id_map: np.ndarray) -> list[int]:
    """Object ids with pixels in an id map (background 0 and void 255 are not objects)."""
    return [int(k) for k in np.unique(id_map) if k not in (0, VOID_ID)]


class _VOSVideo(VideoFrames):
    """Frames and (cached) id maps of one VOS dataset dict, one annotation entry per frame."""

    def __init__(self, dataset_dict: dict[str, Any], image_format: str):
        label = (
            f"{dataset_dict.get('dataset_name', '<dataset>')} video "
            f"{dataset_dict.get('video_id')!r}"
        )
        super().__init__(dataset_dict, image_format, label)
        self._id_maps: dict[int, np.ndarray | None] = {}
        anns, files = dataset_dict.get("mask_annotations"), dataset_dict["file_names"]
        if anns is None or len(anns) != len(files):
            raise ValueError(
                f"{label}: needs one mask_annotations entry (or None) per frame, got "
                f"{None if anns is None else len(anns)} for {len(files)} frames"
            )

    def id_map(self, idx: int) -> np.ndarray | None:
        if idx not in self._id_maps:
            ids = load_id_map(self.dict, idx)
            if ids is not None:
                self.check_size(ids.shape, self.dict["mask_annotations"][idx].get("file"))
            self._id_maps[idx] = ids
        return self._id_maps[idx]


@DATASET_MAPPER_REGISTRY.register()
class VOSDatasetMapper:
    """VOS dataset dict -> training clip with per-object masks, or a whole video to propagate."""

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: list[T.Augmentation],
        image_format: str = "RGB",
        sampling_frame_num: int = 3,
        max_objects: int = 2,
        max_jump: int = 5,
        reverse_prob: float = 0.5,
        sampling_tries: int = 5,
        pseudo_video_affine: RandomAffine | None = None,
    ):
        check_image_format("VOSDatasetMapper", image_format)
        if min(sampling_frame_num, max_objects, max_jump, sampling_tries) < 1:
            raise ValueError(
                "VOSDatasetMapper needs INPUT.SAMPLING_FRAME_NUM, INPUT.VOS.MAX_OBJECTS, "
                "INPUT.VOS.MAX_JUMP and INPUT.VOS.SAMPLING_TRIES >= 1; got "
                f"{sampling_frame_num}, {max_objects}, {max_jump}, {sampling_tries}"
            )
        if not 0.0 <= reverse_prob <= 1.0:
            raise ValueError(f"INPUT.VOS.REVERSE_PROB must be in [0, 1], got {reverse_prob}")
        self.is_train = is_train
        self.augmentations = list(augmentations)
        self.image_format = image_format
        self.sampling_frame_num = sampling_frame_num
        self.max_objects = max_objects
        self.max_jump = max_jump
        self.reverse_prob = reverse_prob
        self.sampling_tries = sampling_tries
        self.pseudo_video_affine = pseudo_video_affine or RandomAffine()

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict[str, Any]:
        return {
            "is_train": is_train,
            "augmentations": build_clip_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "sampling_frame_num": cfg.INPUT.SAMPLING_FRAME_NUM,
            "max_objects": cfg.INPUT.VOS.MAX_OBJECTS,
            "max_jump": cfg.INPUT.VOS.MAX_JUMP,
            "reverse_prob": cfg.INPUT.VOS.REVERSE_PROB,
            "sampling_tries": cfg.INPUT.VOS.SAMPLING_TRIES,
            "pseudo_video_affine": build_pseudo_video_affine(cfg),
        }

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        video = _VOSVideo(dataset_dict, self.image_format)
        if self.is_train:
            return self._training_clip(video)
        return self._whole_video(video)

    # ------------------------------------------------------------------ training
    def _training_clip(self, video: _VOSVideo) -> dict[str, Any]:
        frame_ids, frames, id_maps = self._sample_clip(video)
        first = _objects_in(id_maps[0])
        first_mask = np.isin(id_maps[0], first)
        frames, _, transform = augment_clip(
            self.augmentations, frames, [first_mask] + [None] * (len(frames) - 1)
        )
        id_maps = [transform.apply_segmentation(m) for m in id_maps]
        visible = [k for k in _objects_in(id_maps[0]) if k in first]
        candidates = visible or first or list(video.dict.get("obj_ids") or [])
        if not candidates:
            raise ValueError(f"{video.label}: no object in the sampled frames or in obj_ids")
        count = min(self.max_objects, len(candidates))
        obj_ids = sorted(int(k) for k in np.random.choice(candidates, count, replace=False))
        masks = np.stack([np.stack([m == k for k in obj_ids]) for m in id_maps])
        return {
            "image": torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous(),
            "gt_masks": torch.from_numpy(masks.astype(np.uint8)),
            "obj_ids": obj_ids,
            "frame_ids": frame_ids,
            "height": video.size[0],
            "width": video.size[1],
            "video_id": video.dict.get("video_id"),
            "dataset_name": video.dict.get("dataset_name"),
        }

    def _sample_clip(
        self, video: _VOSVideo
    ) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
        """Frame ids, frames and id maps of a clip whose first frame shows an object if any does."""
        anns = video.dict["mask_annotations"]
        annotated = [i for i, ann in enumerate(anns) if ann is not None]
        if video.dict.get("is_image"):
            if not annotated:
                raise ValueError(f"{video.label}: the image has no annotation to train on")
            idx = annotated[0]
            frames, id_maps = make_pseudo_video(
                video.frame(idx),
                video.id_map(idx),
                self.sampling_frame_num,
                self.pseudo_video_affine,
            )
            return [idx] * self.sampling_frame_num, frames, id_maps
        if len(annotated) != len(anns):
            raise ValueError(
                f"{video.label}: training needs every frame annotated, but "
                f"{len(anns) - len(annotated)} of {len(anns)} frames have no annotation"
            )
        for _ in range(self.sampling_tries):
            frame_ids = sample_vos_clip(len(anns), self.sampling_frame_num, self.max_jump)
            if np.random.rand() < self.reverse_prob:
                frame_ids = frame_ids[::-1]
            if _objects_in(video.id_map(frame_ids[0])):
                break
        frames = [video.frame(i) for i in frame_ids]
        return frame_ids, frames, [video.id_map(i) for i in frame_ids]

    # ------------------------------------------------------------------ inference
    def _whole_video(self, video: _VOSVideo) -> dict[str, Any]:
        d = video.dict
        obj_ids, given_frames = list(d.get("obj_ids") or []), list(d.get("first_frames") or [])
        if not obj_ids or len(given_frames) != len(obj_ids):
            raise ValueError(
                f"{video.label}: inference needs obj_ids and one first_frames entry per object, "
                f"got {obj_ids} and {given_frames}"
            )
        frame_ids = list(range(len(d["file_names"])))
        frames = [video.frame(i) for i in frame_ids]
        given = []
        for obj_id, frame in zip(obj_ids, given_frames):
            ids = video.id_map(frame)
            mask = None if ids is None else ids == obj_id
            if mask is None or not mask.any():
                ann = d["mask_annotations"][frame]
                raise ValueError(
                    f"{video.label}: object {obj_id} has no pixels in its reference annotation "
                    f"{None if ann is None else ann.get('file')} (frame {frame})"
                )
            given.append(mask)
        height, width = video.size
        frames, _, transform = augment_clip(self.augmentations, frames, [None] * len(frames))
        given = [transform.apply_segmentation(m.astype(np.uint8)) for m in given]
        return {
            "image": torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous(),
            "height": height,
            "width": width,
            "file_names": list(d["file_names"]),
            "frame_ids": frame_ids,
            "video_id": d.get("video_id"),
            "dataset_name": d.get("dataset_name"),
            "obj_ids": obj_ids,
            "given_masks": torch.from_numpy(np.stack(given).astype(np.uint8)),
            "given_frames": given_frames,
        }
