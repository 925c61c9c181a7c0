"""Turns one attribute dataset dict (rvos_d2.data.datasets.attributes) into a model input.

Frames are resized to S x S squares (bilinear; S = INPUT.MIN_SIZE_TRAIN, one size, for
training and INPUT.MIN_SIZE_TEST for inference) and object-id maps to S/4 x S/4 (nearest), the
resolution of a stride-4 backbone map; each pixel is labelled with the attributes
(MODEL.DENSE_ATTRIBUTES.NAMES) of its object, 0 for the background. Training takes
INPUT.SAMPLING_FRAME_NUM consecutive frames from a random start, flipped horizontally at random
when INPUT.RANDOM_FLIP is "horizontal" (keep it "none" for attributes that a flip changes, such
as left/right motion); inference takes every frame.
    {"image": T x 3 x S x S uint8 (INPUT.FORMAT), "attribute_labels": {name: T x S/4 x S/4
     int64}, "frame_ids": [T], "height", "width" (original size), "video_id", "dataset_name"}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from rvos_d2.data.build import DATASET_MAPPER_REGISTRY
from rvos_d2.data.datasets.vos import read_id_map
from rvos_d2.utils.image_io import read_image

from detectron2.config import CfgNode, configurable

__all__ = ["LABEL_STRIDE", "AttributeDatasetMapper"]

LABEL_STRIDE = 4  # labels are at the resolution of the finest backbone map (res2)
FLIPS = ("none", "horizontal")


@DATASET_MAPPER_REGISTRY.register()
class AttributeDatasetMapper:
    """Attribute dataset dict -> a clip (training) or a whole video (inference) with labels."""

    @configurable
    def __init__(
        self,
        *,
        is_train: bool,
        attributes: list[str],
        num_classes: list[int],
        size: int,
        num_frames: int,
        flip: bool,
        image_format: str,
    ) -> None:
        if size <= 0 or size % LABEL_STRIDE:
            raise ValueError(f"frame size {size}: expected a positive multiple of {LABEL_STRIDE}")
        self.is_train = is_train
        self.num_classes = dict(zip(attributes, num_classes))
        self.size = size
        self.num_frames = num_frames
        self.flip = flip
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict[str, Any]:
        sizes = cfg.INPUT.MIN_SIZE_TRAIN if is_train else [cfg.INPUT.MIN_SIZE_TEST]
        if len(sizes) != 1:
            raise ValueError(
                f"INPUT.MIN_SIZE_TRAIN={tuple(sizes)}: AttributeDatasetMapper resizes frames to "
                "one square size"
            )
        if cfg.INPUT.RANDOM_FLIP not in FLIPS:
            raise ValueError(
                f"INPUT.RANDOM_FLIP={cfg.INPUT.RANDOM_FLIP!r}: AttributeDatasetMapper supports "
                f"{FLIPS}"
            )
        return {
            "is_train": is_train,
            "attributes": list(cfg.MODEL.DENSE_ATTRIBUTES.NAMES),
            "num_classes": list(cfg.MODEL.DENSE_ATTRIBUTES.NUM_CLASSES),
            "size": int(sizes[0]),
            "num_frames": cfg.INPUT.SAMPLING_FRAME_NUM,
            "flip": is_train and cfg.INPUT.RANDOM_FLIP == "horizontal",
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        video = f"{dataset_dict['dataset_name']} video {dataset_dict['video_id']!r}"
        length = dataset_dict["length"]
        frame_ids = list(range(length))
        if self.is_train:
            if length < self.num_frames:
                raise ValueError(
                    f"{video} has {length} frames, fewer than INPUT.SAMPLING_FRAME_NUM="
                    f"{self.num_frames}"
                )
            start = np.random.randint(length - self.num_frames + 1)
            frame_ids = frame_ids[start : start + self.num_frames]
        lookup = self._lookup(dataset_dict["object_labels"], video)
        label_size = (self.size // LABEL_STRIDE,) * 2
        images, id_maps = [], []
        height, width = dataset_dict.get("height"), dataset_dict.get("width")
        for t in frame_ids:
            image = read_image(dataset_dict["file_names"][t], format=self.image_format)
            height, width = height or image.shape[0], width or image.shape[1]
            images.append(
                np.asarray(Image.fromarray(image).resize((self.size,) * 2, Image.BILINEAR))
            )
            ids = Image.fromarray(read_id_map(dataset_dict["annotation_files"][t]))
            id_maps.append(np.asarray(ids.resize(label_size, Image.NEAREST)))
        image = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        ids = torch.from_numpy(np.stack(id_maps).astype(np.int64))
        labels = {name: table[ids] for name, table in lookup.items()}
        if self.flip and np.random.rand() < 0.5:
            image = image.flip(-1)
            labels = {name: y.flip(-1) for name, y in labels.items()}
        return {
            "image": image,
            "attribute_labels": labels,
            "frame_ids": frame_ids,
            "height": height,
            "width": width,
            "video_id": dataset_dict["video_id"],
            "dataset_name": dataset_dict["dataset_name"],
        }

    def _lookup(
        self, object_labels: dict[int, dict[str, int]], video: str
    ) -> dict[str, torch.Tensor]:
        """Per attribute, a 256-entry table from object id to class (0 for other ids)."""
        tables = {name: torch.zeros(256, dtype=torch.int64) for name in self.num_classes}
        for obj_id, labels in object_labels.items():
            for name, count in self.num_classes.items():
                if name not in labels:
                    raise KeyError(
                        f"{video} object {obj_id}: no label for the attribute {name!r} "
                        f"(MODEL.DENSE_ATTRIBUTES.NAMES); the dataset labels {sorted(labels)}"
                    )
                if not 1 <= labels[name] <= count:
                    raise ValueError(
                        f"{video} object {obj_id}: {name} class {labels[name]} is outside 1.."
                        f"{count} (MODEL.DENSE_ATTRIBUTES.NUM_CLASSES); does the dataset have more "
                        "values than the config?"
                    )
                tables[name][obj_id] = labels[name]
        return tables
