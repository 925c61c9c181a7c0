"""Semi-supervised video object segmentation (VOS): YouTube-VOS 2019, DAVIS-2017 and VOS views
of the synthetic dataset, one dataset dict per video.

Release layouts (under `$DETECTRON2_DATASETS`):
    ytvos2019/{train,valid}/JPEGImages/<video>/<frame>.jpg
    ytvos2019/{train,valid}/Annotations/<video>/<frame>.png   palette PNGs, pixel = object id
    ytvos2019/{train,valid}/meta.json   {"videos": {video: {"objects": {id: {"frames": [...]}}}}}
    ytvos2019/valid_all_frames/JPEGImages/<video>/<frame>.jpg (optional: every frame of valid)
    DAVIS/JPEGImages/480p/<video>/<frame>.jpg
    DAVIS/Annotations/480p/<video>/<frame>.png                palette PNGs, 255 = void
    DAVIS/ImageSets/2017/{train,val}.txt
YouTube-VOS train annotates every frame of its JPEGImages folder (every 5th frame of the video);
valid annotates an object only in the frame where it first appears, so its other frames have no
annotation. DAVIS annotates every frame; as in the official semi-supervised evaluation, its
objects are those of the first frame's mask (the ids present there, which DAVIS numbers 1..n;
that PNG is the only image a loader opens).

Dataset dict fields: dataset_name, video_id, file_names / frame_names (temporal order), length,
height / width (None when no file states them: the mapper fills them from the first frame it
reads), obj_ids, first_frames (per object, the index of the first frame annotating it),
mask_annotations (per frame {"type": "palette_png", "file": path} or None), has_masks (every
frame annotated, so J&F can be computed) and output_frames (indices of the frames a submission
holds).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rvos_d2.data.datasets.ref_ytvos import check_root, read_videos
from rvos_d2.data.datasets.registration import (
    register_replacing,
    require_dir,
    require_file,
    resolve_root,
)
from rvos_d2.data.mask_io import MASK_READER_REGISTRY

VOID_ID = 255  # DAVIS marks pixels to ignore with this value; no object has it
DAVIS_SPLITS = {"train": "train", "val": "valid"}  # DAVIS image set -> registered split name
SYNTH_VOS_SPLITS = ("train", "valid")


def _list_frames(folder: Path, suffix: str, what: str) -> list[str]:
    """Sorted file stems with `suffix` in `folder` (zero-padded names: sorted = temporal order)."""
    require_dir(folder, what)
    names = sorted(p.stem for p in folder.iterdir() if p.suffix.lower() == suffix)
    if not names and suffix == ".jpg":
        raise FileNotFoundError(f"{what}: no {suffix} frame in {folder}")
    return names


def _video_dict(
    dataset_name: str,
    video_id: str,
    image_dir: Path,
    ann_dir: Path,
    frames: list[str],
    annotated: set[str],
    objects: dict[int, str],
    size: tuple[int, int] | None,
    has_masks: bool,
    output_frames: list[int],
) -> dict[str, Any]:
    """One VOS dataset dict; `objects` maps object id -> name of its first annotated frame."""
    index = {name: i for i, name in enumerate(frames)}
    return {
        "dataset_name": dataset_name,
        "video_id": video_id,
        "file_names": [str(image_dir / f"{name}.jpg") for name in frames],
        "frame_names": list(frames),
        "length": len(frames),
        "height": None if size is None else size[0],
        "width": None if size is None else size[1],
        "obj_ids": sorted(objects),
        "first_frames": [index[objects[k]] for k in sorted(objects)],
        "mask_annotations": [
            {"type": "palette_png", "file": str(ann_dir / f"{name}.png")}
            if name in annotated
            else None
            for name in frames
        ],
        "has_masks": has_masks,
        "output_frames": output_frames,
    }


def load_ytvos_vos(
    root: str,
    split: str,
    dataset_name: str,
    dense: bool,
    image_split: str | None = None,
) -> list[dict[str, Any]]:
    """Dataset dicts of one split of a YouTube-VOS-layout root (YouTube-VOS or the synthetic set).

    Args:
        dense: every frame must have its annotation PNG (train splits); otherwise only the
            frames where an object first appears do (YouTube-VOS valid).
        image_split: read the frames from `<root>/<image_split>/JPEGImages` instead of the
            split's own folder (`valid_all_frames`); the annotations and `output_frames` stay
            those of the split.
    """
    check_root(root, dataset_name)
    split_dir = Path(root) / split
    meta_path = split_dir / "meta.json"
    videos = read_videos(str(meta_path), f"dataset {dataset_name}: object meta file")
    image_root = Path(root) / (image_split or split) / "JPEGImages"
    dicts = []
    for video_id in sorted(videos):
        entry = videos[video_id]
        if not isinstance(entry, dict) or not isinstance(entry.get("objects"), dict):
            raise ValueError(f"{meta_path}: video {video_id!r} has no 'objects' mapping")
        image_dir = image_root / video_id
        ann_dir = split_dir / "Annotations" / video_id
        frames = _list_frames(image_dir, ".jpg", f"dataset {dataset_name}: frames of {video_id}")
        split_frames = frames
        if image_split is not None:
            split_frames = _list_frames(
                split_dir / "JPEGImages" / video_id, ".jpg", f"dataset {dataset_name}: frames"
            )
        pngs = set(_list_frames(ann_dir, ".png", f"dataset {dataset_name}: annotations"))
        if dense:
            missing = [f for f in frames if f not in pngs]
            if missing:
                raise FileNotFoundError(
                    f"dataset {dataset_name}: annotation {ann_dir / (missing[0] + '.png')} not "
                    f"found ({len(missing)} frames of video {video_id!r} lack theirs)"
                )
        objects = {}
        for obj_id, obj in entry["objects"].items():
            listed = obj.get("frames") if isinstance(obj, dict) else None
            if not isinstance(listed, list) or not listed or not str(obj_id).isdigit():
                raise ValueError(
                    f"{meta_path}: video {video_id!r} object {obj_id!r} needs a numeric id and a "
                    f"non-empty 'frames' list"
                )
            first = min(str(f) for f in listed)
            if first not in frames:
                raise FileNotFoundError(
                    f"{meta_path}: video {video_id!r} object {obj_id} first appears in frame "
                    f"{first!r}, but {image_dir / (first + '.jpg')} does not exist"
                )
            if first not in pngs:
                raise FileNotFoundError(
                    f"dataset {dataset_name}: annotation {ann_dir / (first + '.png')} not found "
                    f"(the first frame of object {obj_id} in {meta_path})"
                )
            objects[int(obj_id)] = first
        size = None
        if "height" in entry and "width" in entry:
            size = (int(entry["height"]), int(entry["width"]))
        output = set(split_frames)
        dicts.append(
            _video_dict(
                dataset_name,
                video_id,
                image_dir,
                ann_dir,
                frames,
                pngs if dense else pngs & set(objects.values()),
                objects,
                size,
                dense,
                [i for i, name in enumerate(frames) if name in output],
            )
        )
    return dicts


def load_davis_vos(root: str, image_set: str, dataset_name: str) -> list[dict[str, Any]]:
    """Dataset dicts of DAVIS-2017 480p `image_set` ("train" or "val"); every frame annotated."""
    check_root(root, dataset_name)
    davis = Path(root)
    set_path = require_file(
        davis / "ImageSets" / "2017" / f"{image_set}.txt", f"dataset {dataset_name}: image set"
    )
    dicts = []
    for video_id in set_path.read_text(encoding="utf-8").split():
        image_dir = davis / "JPEGImages" / "480p" / video_id
        ann_dir = davis / "Annotations" / "480p" / video_id
        frames = _list_frames(image_dir, ".jpg", f"dataset {dataset_name}: frames of {video_id}")
        pngs = set(_list_frames(ann_dir, ".png", f"dataset {dataset_name}: annotations"))
        missing = [f for f in frames if f not in pngs]
        if missing:
            raise FileNotFoundError(
                f"dataset {dataset_name}: annotation {ann_dir / (missing[0] + '.png')} not found "
                f"({len(missing)} frames of video {video_id!r} lack theirs)"
            )
        ids = read_id_map(str(ann_dir / f"{frames[0]}.png"))
        obj_ids = [int(k) for k in np.unique(ids) if k not in (0, VOID_ID)]
        if not obj_ids:
            raise ValueError(f"{ann_dir / (frames[0] + '.png')}: no object in the first frame")
        objects = {k: frames[0] for k in obj_ids}
        dicts.append(
            _video_dict(
                dataset_name,
                video_id,
                image_dir,
                ann_dir,
                frames,
                pngs,
                objects,
                ids.shape,
                True,
                list(range(len(frames))),
            )
        )
    return dicts


def read_id_map(path: str) -> np.ndarray:
    """H x W uint8 object ids of a palette (or grey) annotation PNG; errors name the file."""
    try:
        with Image.open(path) as img:
            ids = np.asarray(img if img.mode in ("P", "L") else img.convert("L"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"annotation {path} not found") from err
    except (OSError, ValueError) as err:
        raise OSError(f"cannot read annotation {path}: {err}") from err
    return ids.astype(np.uint8, copy=False)


def load_id_map(dataset_dict: dict[str, Any], frame_idx: int) -> np.ndarray | None:
    """Frame `frame_idx`'s H x W uint8 object-id map, or None for a frame without annotation.

    Palette PNGs are read once; other annotation types go through their mask reader object by
    object (a pixel claimed by several objects keeps the last id).
    """
    ann = dataset_dict["mask_annotations"][frame_idx]
    if ann is None:
        return None
    if ann["type"] == "palette_png":
        return read_id_map(ann["file"])
    if ann["type"] not in MASK_READER_REGISTRY:
        raise ValueError(
            f"video {dataset_dict.get('video_id')!r}: unknown mask annotation type "
            f"{ann['type']!r}; known: {MASK_READER_REGISTRY.names()}"
        )
    reader = MASK_READER_REGISTRY.get(ann["type"])
    ids = None
    for obj_id in dataset_dict["obj_ids"]:
        mask = reader(ann, [obj_id])
        ids = np.zeros(mask.shape, np.uint8) if ids is None else ids
        ids[mask] = obj_id
    return ids


def register_ytvos2019_vos(root: str | os.PathLike | None = None) -> list[str]:
    """Registers ytvos2019_vos_{train,valid} and ytvos2019_vos_valid_all_frames.

    A None root is `$DETECTRON2_DATASETS/ytvos2019`, resolved when a split is loaded.
    """
    root = None if root is None else str(root)
    specs = {
        "ytvos2019_vos_train": ("train", True, None),
        "ytvos2019_vos_valid": ("valid", False, None),
        "ytvos2019_vos_valid_all_frames": ("valid", False, "valid_all_frames"),
    }
    for name, (split, dense, image_split) in specs.items():
        register_replacing(
            name,
            functools.partial(_load_ytvos, root, split, name, dense, image_split),
            evaluator_type="vos",
            dataset_root=root,
            split=split,
            has_masks=dense,
        )
    return list(specs)


def _load_ytvos(
    root: str | None, split: str, name: str, dense: bool, image_split: str | None
) -> list[dict[str, Any]]:
    return load_ytvos_vos(resolve_root(root, "ytvos2019"), split, name, dense, image_split)


def register_davis17_vos(root: str | os.PathLike | None = None) -> list[str]:
    """Registers davis17_vos_{train,valid} (DAVIS-2017 480p train / val image sets).

    A None root is `$DETECTRON2_DATASETS/DAVIS`, resolved when a split is loaded.
    """
    root = None if root is None else str(root)
    names = []
    for image_set, split in DAVIS_SPLITS.items():
        name = f"davis17_vos_{split}"
        register_replacing(
            name,
            functools.partial(_load_davis, root, image_set, name),
            evaluator_type="vos",
            dataset_root=root,
            split=split,
            has_masks=True,
        )
        names.append(name)
    return names


def _load_davis(root: str | None, image_set: str, name: str) -> list[dict[str, Any]]:
    return load_davis_vos(resolve_root(root, "DAVIS"), image_set, name)


def register_synthetic_vos(
    root: str | os.PathLike | None = None, prefix: str = "rvos_synth_vos"
) -> list[str]:
    """Registers `<prefix>_{train,valid}`: the synthetic videos with every object a target.

    A None root is `$DETECTRON2_DATASETS/rvos_synth`, resolved when a split is loaded.
    """
    root = None if root is None else str(root)
    names = []
    for split in SYNTH_VOS_SPLITS:
        name = f"{prefix}_{split}"
        register_replacing(
            name,
            functools.partial(_load_synthetic, root, split, name),
            evaluator_type="vos",
            dataset_root=root,
            split=split,
            has_masks=True,
        )
        names.append(name)
    return names


def _load_synthetic(root: str | None, split: str, name: str) -> list[dict[str, Any]]:
    resolved = resolve_root(root, "rvos_synth")
    require_dir(
        Path(resolved),
        f"dataset {name} root",
        f"generate it with: python tools/make_synthetic.py --output {resolved}",
    )
    return load_ytvos_vos(resolved, split, name, dense=True)


register_ytvos2019_vos()
register_davis17_vos()
register_synthetic_vos()
