"""MeViS: motion expressions, each referring to one or several objects (the target is their union).

Release layout (under `$DETECTRON2_DATASETS/mevis`):
    {train,valid_u,valid}/JPEGImages/<vid>/<frame>.jpg
    {train,valid_u,valid}/meta_expressions.json
        {"videos": {vid: {"expressions": {exp_id: {"exp": str, "obj_id": [int], "anno_id": [int]}},
                          "frames": [...]}}}
    {train,valid_u}/mask_dict.json   {anno_id: [COCO RLE or null, one per listed frame]}
valid has no masks (challenge submission). Loading reads meta_expressions.json only; the large
mask_dict.json is read lazily, once per process, by the "mevis_rle" mask reader, so `height` and
`width` are None (the dataset mapper fills them from the first frame).
"""

from __future__ import annotations

import os
from typing import Any

from rvos_d2.data.datasets.ref_ytvos import (
    check_root,
    read_videos,
    video_expressions,
    video_frames,
)
from rvos_d2.data.datasets.registration import register_replacing, resolve_root, rvos_record

SPLITS = {"mevis_train": "train", "mevis_valid_u": "valid_u", "mevis_valid": "valid"}
SPLITS_WITH_MASKS = ("train", "valid_u")


def _id_list(exp: dict[str, Any], key: str, where: str) -> list[int]:
    ids = exp.get(key)
    if isinstance(ids, int):
        ids = [ids]
    if not isinstance(ids, list) or not ids:
        raise ValueError(f"{where} has no {key!r} list")
    try:
        return [int(i) for i in ids]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {key!r} holds a value that is not an integer id") from err


def load_mevis(root: str, split: str, dataset_name: str) -> list[dict[str, Any]]:
    """Dataset dicts, one per (video, expression); masks point into the split's mask_dict.json.

    Frame i of a mask_dict track belongs to the i-th frame name as listed in the json; the
    dicts list frames in sorted (temporal) order and keep that index per frame.
    """
    check_root(root, dataset_name)
    exp_path = os.path.join(root, split, "meta_expressions.json")
    videos = read_videos(exp_path, f"dataset {dataset_name}: expressions file")
    has_masks = split in SPLITS_WITH_MASKS
    mask_path = os.path.join(root, split, "mask_dict.json")
    if has_masks and not os.path.isfile(mask_path):
        raise FileNotFoundError(f"dataset {dataset_name}: mask file not found: {mask_path}")
    image_dir = os.path.join(root, split, "JPEGImages")

    dicts = []
    for video_id in sorted(videos):
        entry = videos[video_id]
        frames = video_frames(entry, exp_path, video_id)
        listed = {name: i for i, name in enumerate(entry["frames"])}
        for exp_id, text in video_expressions(entry, exp_path, video_id).items():
            obj_ids, mask_annotations = [], None
            if has_masks:
                exp = entry["expressions"][exp_id]
                where = f"{exp_path}: video {video_id!r} expression {exp_id!r}"
                obj_ids = _id_list(exp, "obj_id", where)
                anno_ids = [str(i) for i in _id_list(exp, "anno_id", where)]
                if len(anno_ids) != len(obj_ids):
                    raise ValueError(f"{where}: {len(obj_ids)} obj_id but {len(anno_ids)} anno_id")
                mask_annotations = [
                    {
                        "type": "mevis_rle",
                        "file": mask_path,
                        "anno_ids": anno_ids,
                        "frame": listed[f],
                    }
                    for f in frames
                ]
            record = rvos_record(
                dataset_name=dataset_name,
                video_id=video_id,
                exp_id=exp_id,
                expression=text,
                file_names=[f"{image_dir}/{video_id}/{f}.jpg" for f in frames],
                frame_names=frames,
                height=None,
                width=None,
                obj_ids=obj_ids,
                mask_annotations=mask_annotations,
            )
            dicts.append(record)
    return dicts


def register_mevis(root: str | None = None) -> None:
    """Registers mevis_train, mevis_valid_u (local J&F) and mevis_valid (submission).

    A None root is `$DETECTRON2_DATASETS/mevis`, resolved when a split is loaded.
    """
    for name, split in SPLITS.items():
        has_masks = split in SPLITS_WITH_MASKS
        register_replacing(
            name,
            lambda split=split, name=name: load_mevis(resolve_root(root, "mevis"), split, name),
            evaluator_type="rvos" if has_masks else "rvos_submission",
            dataset_root=root,
            split=split,
            has_masks=has_masks,
        )


register_mevis()
