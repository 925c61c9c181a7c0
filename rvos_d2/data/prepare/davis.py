"""Conversion of the Ref-DAVIS17 release into the Ref-YouTube-VOS layout that `ref_davis_*`
read (rvos_d2.data.datasets.ref_davis describes both layouts; tools/convert_davis_to_ytvos.py
runs it)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rvos_d2.data.datasets.ref_davis import EXPRESSION_TYPE_TAGS, SPLITS
from rvos_d2.data.datasets.registration import clean_expression, require_dir, require_file

__all__ = ["EXPRESSION_FILES", "convert_davis_to_ytvos", "read_expression_file"]

logger = logging.getLogger(__name__)

# (annotator, expression type) -> expression file of davis_text_annotations
EXPRESSION_FILES = {
    (1, "first_frame"): "Davis17_annot1.txt",
    (1, "full_video"): "Davis17_annot1_full_video.txt",
    (2, "first_frame"): "Davis17_annot2.txt",
    (2, "full_video"): "Davis17_annot2_full_video.txt",
}
# Video names misspelt in the released expression files -> DAVIS folder names.
VIDEO_NAME_FIXES = {
    "clasic-car": "classic-car",
    "dog-scale": "dogs-scale",
    "motor-bike": "motorbike",
}
_LINE = re.compile(r"^(\S+)\s+(\d+)\s+(.*\S)\s*$")


def read_expression_file(path: Path) -> list[tuple[str, int, str]]:
    """(video, obj_id, expression) of each line of a Ref-DAVIS expression file.

    The released files mix encodings (annotator 2 is Latin-1): UTF-8 is tried first.
    """
    raw = require_file(path, "Ref-DAVIS expression file").read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _LINE.match(line.strip())
        if match is None:
            raise ValueError(f'{path}:{number}: expected `video obj_id "expression"`, got {line!r}')
        video, obj_id, expression = match.groups()
        if len(expression) >= 2 and expression[0] == expression[-1] == '"':
            expression = expression[1:-1]
        expression = clean_expression(expression, f"{path}:{number}")
        entries.append((VIDEO_NAME_FIXES.get(video, video), int(obj_id), expression))
    return entries


def _read_split(path: Path) -> list[str]:
    return require_file(path, "DAVIS image set").read_text(encoding="utf-8").split()


def _scan_video(image_dir: Path, ann_dir: Path, video: str) -> dict[str, Any]:
    """Frame names, size and, per object id, the frames where it appears, from the masks."""
    require_dir(image_dir, f"DAVIS frames of video {video}")
    require_dir(ann_dir, f"DAVIS annotations of video {video}")
    frames = sorted(p.stem for p in image_dir.glob("*.jpg"))
    if not frames:
        raise FileNotFoundError(f"DAVIS video {video}: no .jpg frame in {image_dir}")
    objects: dict[int, list[str]] = defaultdict(list)
    sizes = set()
    for frame in frames:
        png = require_file(ann_dir / f"{frame}.png", f"DAVIS annotation of video {video}")
        with Image.open(png) as img:
            ids = np.asarray(img)
        if ids.ndim != 2:
            raise ValueError(f"{png}: expected a palette (object id) mask, got mode {img.mode}")
        sizes.add(ids.shape)
        for obj_id in np.unique(ids):
            if obj_id != 0:
                objects[int(obj_id)].append(frame)
    if len(sizes) != 1:
        raise ValueError(f"DAVIS video {video}: annotation sizes differ in {ann_dir}: {sizes}")
    height, width = sizes.pop()
    return {"frames": frames, "objects": dict(objects), "height": height, "width": width}


def _place_folder(src: Path, dst: Path, copy: bool) -> None:
    """Links (or copies) a video folder into the converted layout; reruns are idempotent."""
    if dst.is_symlink() and dst.resolve() == src.resolve():
        return
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(
            f"{dst} exists and is not a link to {src}; remove it to convert again"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copytree(src, dst)
    else:
        os.symlink(src.resolve(), dst, target_is_directory=True)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def convert_davis_to_ytvos(
    davis_root: Path,
    output_root: Path,
    annotations: str = "Annotations",
    resolution: str = "480p",
    copy: bool = False,
) -> dict[str, int]:
    """Writes Ref-DAVIS17 in the Ref-YouTube-VOS layout; returns expressions per split folder.

    Args:
        davis_root: folder holding `DAVIS/` and `davis_text_annotations/`.
        output_root: where `{train,valid}/` and `meta_expressions/` are written.
        annotations: DAVIS mask folder, "Annotations" or "Annotations_unsupervised".
        copy: copy the frame and mask folders instead of linking them.
    """
    davis = require_dir(davis_root / "DAVIS", "DAVIS-2017 folder")
    text_dir = require_dir(davis_root / "davis_text_annotations", "Ref-DAVIS expressions")
    expressions: dict[str, list[tuple[int, int, str, str]]] = defaultdict(list)
    for (annotator, kind), name in EXPRESSION_FILES.items():
        for video, obj_id, text in read_expression_file(text_dir / name):
            expressions[video].append((obj_id, annotator, kind, text))

    counts, converted = {}, set()
    for image_set, split in SPLITS.items():
        videos = _read_split(davis / "ImageSets" / "2017" / f"{image_set}.txt")
        meta, meta_exp = {}, {}
        for video in videos:
            image_dir = davis / "JPEGImages" / resolution / video
            ann_dir = davis / annotations / resolution / video
            info = _scan_video(image_dir, ann_dir, video)
            entries = {}
            for obj_id, annotator, kind, text in sorted(expressions.get(video, [])):
                if obj_id not in info["objects"]:
                    raise ValueError(
                        f"{text_dir / EXPRESSION_FILES[annotator, kind]}: video {video} "
                        f"expression {text!r} refers to object "
                        f"{obj_id}, absent from {ann_dir} (objects: {sorted(info['objects'])})"
                    )
                exp_id = f"{obj_id}_a{annotator}_{EXPRESSION_TYPE_TAGS[kind]}"
                exp_id += "" if exp_id not in entries else f"_{len(entries)}"
                entries[exp_id] = {
                    "exp": text,
                    "obj_id": str(obj_id),
                    "annotator": annotator,
                    "expression_type": kind,
                }
            if not entries:
                logger.warning(f"Ref-DAVIS: video {video} has no expression; it is left out")
                continue
            _place_folder(image_dir, output_root / split / "JPEGImages" / video, copy)
            _place_folder(ann_dir, output_root / split / "Annotations" / video, copy)
            objects = {str(k): {"frames": v} for k, v in sorted(info["objects"].items())}
            meta[video] = {"objects": objects, "height": info["height"], "width": info["width"]}
            meta_exp[video] = {"expressions": entries, "frames": info["frames"]}
            converted.add(video)
        _write_json(output_root / split / "meta.json", {"videos": meta})
        _write_json(
            output_root / "meta_expressions" / split / "meta_expressions.json", {"videos": meta_exp}
        )
        counts[split] = sum(len(v["expressions"]) for v in meta_exp.values())
    unused = sorted(set(expressions) - converted)
    if unused:
        logger.warning(f"Ref-DAVIS: expressions of videos outside train/val ignored: {unused}")
    return counts
