"""Reads the target mask of one frame of a dataset dict, whatever format the dataset stores.

A dataset dict carries `mask_annotations`: one entry per frame, `None` for a frame without
annotation (not scored, no mask loss), else a dict whose "type" selects a reader below.
The target is the union of the objects in `dataset_dict["obj_ids"]` (several for MeViS).
Loaders that read no image leave `height` / `width` None; the size check is then skipped.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from rvos_d2.utils.registry import NamedRegistry

MASK_READER_REGISTRY = NamedRegistry("MASK_READER")
MASK_READER_REGISTRY.__doc__ = """Readers of one frame's target mask, keyed by the annotation's
"type"; each takes (annotation dict, object ids) and returns an H x W bool array."""


@MASK_READER_REGISTRY.register_as("palette_png")
def _read_palette_png(ann: dict[str, Any], obj_ids: list[int]) -> np.ndarray:
    path = ann["file"]
    try:
        with Image.open(path) as img:
            ids = np.asarray(img if img.mode in ("P", "L") else img.convert("L"))
    except (OSError, ValueError) as err:
        raise OSError(f"cannot read annotation mask {path}: {err}") from err
    return np.isin(ids, np.asarray(obj_ids, dtype=ids.dtype))


@MASK_READER_REGISTRY.register_as("rle")
def _read_rle(ann: dict[str, Any], obj_ids: list[int]) -> np.ndarray:
    return mask_utils.decode(ann["rle"]).astype(bool)


@functools.lru_cache(maxsize=4)
def _mevis_mask_dict(path: str) -> dict[str, list]:
    """MeViS mask_dict.json (anno_id -> per-frame RLE or null), read once per process."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as err:
        raise OSError(f"cannot read MeViS mask file {path}: {err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"MeViS mask file {path} is not valid json: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"MeViS mask file {path}: expected an object anno_id -> list of RLEs")
    return data


@MASK_READER_REGISTRY.register_as("mevis_rle")
def _read_mevis_rle(ann: dict[str, Any], obj_ids: list[int]) -> np.ndarray:
    """Union over the expression's anno_ids of their RLE at frame `ann["frame"]` (null = absent).

    The frame size comes from any RLE of those annotations when all are null in this frame.
    """
    path, frame = ann["file"], ann["frame"]
    tracks = []
    for anno_id in ann["anno_ids"]:
        track = _mevis_mask_dict(path).get(str(anno_id))
        if not isinstance(track, list) or frame >= len(track):
            raise ValueError(
                f"MeViS mask file {path}: annotation {anno_id!r} is missing or has no frame {frame}"
            )
        tracks.append(track)
    present = [mask_utils.decode(track[frame]) for track in tracks if track[frame]]
    if present:
        return np.any(np.stack(present), axis=0)
    size = next((rle["size"] for track in tracks for rle in track if rle), None)
    if size is None:
        raise ValueError(
            f"MeViS mask file {path}: annotations {ann['anno_ids']} are empty in every frame, "
            "so the frame size is unknown"
        )
    return np.zeros(size, dtype=bool)


def load_target_mask(dataset_dict: dict[str, Any], frame_idx: int) -> np.ndarray | None:
    """Returns frame `frame_idx`'s H x W bool target mask, or None for an unannotated frame."""
    ann = dataset_dict["mask_annotations"][frame_idx]
    if ann is None:
        return None
    if ann["type"] not in MASK_READER_REGISTRY:
        raise ValueError(
            f"video {dataset_dict.get('video_id')}: unknown mask annotation type {ann['type']!r}; "
            f"known: {MASK_READER_REGISTRY.names()}"
        )
    reader = MASK_READER_REGISTRY.get(ann["type"])
    mask = reader(ann, dataset_dict["obj_ids"])
    expected = (dataset_dict.get("height"), dataset_dict.get("width"))
    if None not in expected and mask.shape != expected:
        raise ValueError(
            f"video {dataset_dict.get('video_id')} frame {frame_idx}: mask {ann.get('file', '')} "
            f"has size {mask.shape}, the video is {expected}"
        )
    return mask
