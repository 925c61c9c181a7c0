"""Ref-YouTube-VOS: reads the official release layout into rvos_d2 dataset dicts.

Layout (under `$DETECTRON2_DATASETS/ref-youtube-vos`):
    meta_expressions/{train,valid,test}/meta_expressions.json
        {"videos": {vid: {"expressions": {exp_id: {"exp": str, "obj_id": str}}, "frames": [...]}}}
        (valid / test expressions carry no "obj_id")
    train/JPEGImages/<vid>/<frame>.jpg, train/Annotations/<vid>/<frame>.png (palette: object ids)
    train/meta.json  {"videos": {vid: {"objects": {obj_id: {"category": str, "frames": [...]}}}}}
    valid/JPEGImages/<vid>/<frame>.jpg

Registration reads nothing; loading reads the json files only (never an image). The frame size
is not in the official files, so `height` and `width` are None unless the meta.json entry of
the video carries "height" / "width" (the synthetic and converted datasets write them); the
dataset mapper fills None from the first frame it decodes. The synthetic dataset is written in
this layout and read by this loader too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rvos_d2.data.datasets.registration import (
    clean_expression,
    datasets_root,
    register_replacing,
    require_dir,
    resolve_root,
    rvos_record,
)

HOLDOUT_MODULUS = 20  # a train video is held out when md5(video id) % 20 == 0 (about 5%)


def in_holdout(video_id: str) -> bool:
    """Whether a train video belongs to the held-out slice (stable: depends on its id only)."""
    digest = hashlib.md5(video_id.encode("utf-8")).hexdigest()
    return int(digest, 16) % HOLDOUT_MODULUS == 0


def read_json(path: str, what: str) -> Any:
    """Loads a json file, naming the file (and what it should hold) in any error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid json: {err}") from err


def read_videos(path: str, what: str) -> dict[str, Any]:
    """The {"videos": {...}} mapping of a release json file."""
    data = read_json(path, what)
    if not isinstance(data, dict) or not isinstance(data.get("videos"), dict):
        raise ValueError(f"{what} {path}: expected a top-level object with a 'videos' mapping")
    return data["videos"]


def video_frames(entry: Any, path: str, video_id: str) -> list[str]:
    """The sorted frame names of one meta_expressions video entry (zero-padded names sort)."""
    frames = entry.get("frames") if isinstance(entry, dict) else None
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{path}: video {video_id!r} lists no frames")
    if not all(isinstance(f, str) and f for f in frames):
        raise ValueError(f"{path}: video {video_id!r} has a frame name that is not a string")
    return sorted(frames)


def video_expressions(entry: dict[str, Any], path: str, video_id: str) -> dict[str, str]:
    """exp_id -> cleaned text of a video entry; a missing or empty text raises ValueError."""
    expressions = entry.get("expressions")
    if not isinstance(expressions, dict):
        raise ValueError(f"{path}: video {video_id!r} has no 'expressions' mapping")
    texts = {}
    for exp_id, exp in expressions.items():
        text = exp.get("exp") if isinstance(exp, dict) else None
        if not isinstance(text, str):
            raise ValueError(f"{path}: video {video_id!r} expression {exp_id!r} has no 'exp' text")
        texts[str(exp_id)] = clean_expression(
            text, f"{path}: video {video_id!r} expression {exp_id!r}"
        )
    return texts


def check_root(root: str, dataset_name: str) -> None:
    """Raises FileNotFoundError naming the dataset and $DETECTRON2_DATASETS if root is missing."""
    require_dir(
        Path(root),
        f"dataset {dataset_name} root",
        f"datasets are looked up under $DETECTRON2_DATASETS, now {str(datasets_root())!r}; "
        "see projects/RVOS/DATASETS.md",
    )


def _video_meta(meta_path: str, objects_by_video: dict[str, Any], video_id: str) -> dict:
    video = objects_by_video.get(video_id)
    if not isinstance(video, dict) or not isinstance(video.get("objects"), dict):
        raise ValueError(f"{meta_path}: video {video_id!r} is missing or has no 'objects' mapping")
    return video


def load_ref_ytvos(
    root: str,
    split: str,
    dataset_name: str,
    has_masks: bool,
    video_filter: Callable[[str], bool] | None = None,
    exclude_split: str | None = None,
) -> list[dict[str, Any]]:
    """Dataset dicts, one per (video, expression), of one split of a Ref-YouTube-VOS-style root.

    Args:
        has_masks: read obj_id and point each frame at its palette PNG (train-style splits).
        video_filter: keeps only the videos for which it returns True.
        exclude_split: drops the videos listed in that split's meta_expressions.json when the
            file exists (the official valid file also lists the test videos).
    """
    check_root(root, dataset_name)
    exp_path = os.path.join(root, "meta_expressions", split, "meta_expressions.json")
    videos = read_videos(exp_path, f"dataset {dataset_name}: expressions file")
    if exclude_split is not None:
        excluded = os.path.join(root, "meta_expressions", exclude_split, "meta_expressions.json")
        if os.path.isfile(excluded):
            drop = read_videos(excluded, f"dataset {dataset_name}: expressions file")
            videos = {v: e for v, e in videos.items() if v not in drop}
    objects_by_video: dict[str, Any] = {}
    meta_path = os.path.join(root, split, "meta.json")
    if has_masks:
        objects_by_video = read_videos(meta_path, f"dataset {dataset_name}: object meta file")
    image_dir = os.path.join(root, split, "JPEGImages")
    ann_dir = os.path.join(root, split, "Annotations")

    dicts = []
    for video_id in sorted(videos):
        if video_filter is not None and not video_filter(video_id):
            continue
        entry = videos[video_id]
        frames = video_frames(entry, exp_path, video_id)
        expressions = video_expressions(entry, exp_path, video_id)
        video_meta = _video_meta(meta_path, objects_by_video, video_id) if has_masks else {}
        height, width = video_meta.get("height"), video_meta.get("width")
        file_names = [f"{image_dir}/{video_id}/{f}.jpg" for f in frames]
        mask_files = [f"{ann_dir}/{video_id}/{f}.png" for f in frames] if has_masks else []
        for exp_id, text in expressions.items():
            obj_ids, mask_annotations = [], None
            if has_masks:
                obj_id = entry["expressions"][exp_id].get("obj_id")
                if str(obj_id) not in video_meta["objects"]:
                    raise ValueError(
                        f"{exp_path}: video {video_id!r} expression {exp_id!r} refers to object "
                        f"{obj_id!r}, which {meta_path} does not list for that video "
                        f"(known: {sorted(video_meta['objects'])})"
                    )
                obj_ids = [int(obj_id)]
                mask_annotations = [{"type": "palette_png", "file": path} for path in mask_files]
            record = rvos_record(
                dataset_name=dataset_name,
                video_id=video_id,
                exp_id=exp_id,
                expression=text,
                file_names=file_names,
                frame_names=frames,
                height=height,
                width=width,
                obj_ids=obj_ids,
                mask_annotations=mask_annotations,
            )
            dicts.append(record)
    return dicts


def register_ref_ytvos_split(
    name: str,
    root: str | None,
    split: str,
    has_masks: bool,
    evaluator_type: str,
    video_filter: Callable[[str], bool] | None = None,
    exclude_split: str | None = None,
) -> None:
    """Registers one lazily loaded split (replacing an earlier registration of `name`).

    A None root is `$DETECTRON2_DATASETS/ref-youtube-vos`, resolved when the split is loaded.
    """
    register_replacing(
        name,
        lambda: load_ref_ytvos(
            resolve_root(root, "ref-youtube-vos"),
            split,
            name,
            has_masks,
            video_filter,
            exclude_split,
        ),
        evaluator_type=evaluator_type,
        dataset_root=root,
        split=split,
        has_masks=has_masks,
    )


def register_all_ref_ytvos(root: str | None = None) -> None:
    """Registers ref_ytvos_{train,valid} and the held-out slice of train with its complement.

    A None root is resolved from $DETECTRON2_DATASETS when a split is loaded.
    """
    register_ref_ytvos_split("ref_ytvos_train", root, "train", True, "rvos")
    register_ref_ytvos_split(
        "ref_ytvos_train_sub", root, "train", True, "rvos", lambda v: not in_holdout(v)
    )
    register_ref_ytvos_split("ref_ytvos_train_holdout", root, "train", True, "rvos", in_holdout)
    register_ref_ytvos_split(
        "ref_ytvos_valid", root, "valid", False, "rvos_submission", exclude_split="test"
    )


register_all_ref_ytvos()
