"""RefCOCO, RefCOCO+ and RefCOCOg (referring image segmentation) as one-frame videos.

Layout under `$DETECTRON2_DATASETS/coco` (the released refer annotations beside COCO 2014):
  train2014/COCO_train2014_<id>.jpg
  refcoco/{refs(unc).p, instances.json}     splits train, val, testA, testB
  refcoco+/{refs(unc).p, instances.json}    splits train, val, testA, testB
  refcocog/{refs(umd).p, instances.json}    splits train, val, test

One dataset dict per (image, sentence): a ref with three sentences gives three dicts. Each is a
video of length 1 with `is_image: True`, so a mapper can build a pseudo-video from it, and its
target is the referred COCO annotation converted from polygons to a COCO RLE.
"""

from __future__ import annotations

import builtins
import functools
import json
import pickle
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from rvos_d2.data.datasets.registration import (
    clean_expression,
    datasets_root,
    register_lazy,
    require_dir,
    require_file,
    rvos_record,
)

# (dataset, split_by) -> splits of the released refs file
REFCOCO_SPLITS = {
    ("refcoco", "unc"): ("train", "val", "testA", "testB"),
    ("refcoco+", "unc"): ("train", "val", "testA", "testB"),
    ("refcocog", "umd"): ("train", "val", "test"),
}

# Plain builtin data types: constructing them runs no user code, so a refs file cannot
# execute anything while it is unpickled.
_SAFE_BUILTINS = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "int", "float", "bool"}
)


class _BuiltinsOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only plain builtin data types and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data allowed")


def load_refs(path: Path) -> list[dict[str, Any]]:
    """The refs list of a refer `refs(<split_by>).p` file, unpickled with builtins only.

    The released files are Python 2 pickles of dicts, lists, strings and numbers; the
    restricted unpickler keeps loading them safe even when the file is untrusted.
    """
    try:
        with open(path, "rb") as f:
            refs = _BuiltinsOnlyUnpickler(f, encoding="utf-8").load()
    except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"cannot read refs file {path}: {err}") from err
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise ValueError(f"malformed refs file {path}: expected a list of dicts")
    return refs


def annotation_rle(ann: dict[str, Any], height: int, width: int, where: str) -> dict[str, Any]:
    """COCO RLE (counts as str) of a COCO annotation's polygons or RLE segmentation."""
    seg = ann.get("segmentation")
    try:
        if isinstance(seg, list):
            if not seg or any(len(p) < 6 or len(p) % 2 for p in seg):
                raise ValueError("polygons need at least 3 (x, y) points")
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, height, width)
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            rle = dict(seg)
        else:
            raise ValueError(f"unsupported segmentation {type(seg).__name__}")
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{where}: malformed segmentation of annotation {ann.get('id')}: {err}"
        ) from err
    counts = rle["counts"]
    counts = counts.decode("ascii") if isinstance(counts, bytes) else counts
    return {"size": [int(x) for x in rle["size"]], "counts": counts}


def _index_instances(path: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """image id -> image and annotation id -> annotation of an instances.json."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        images = {img["id"]: img for img in data["images"]}
        anns = {ann["id"]: ann for ann in data["annotations"]}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"malformed COCO instances file {path}: {err}") from err
    return images, anns


def load_refcoco(
    coco_root: Path, dataset: str, split_by: str, split: str, dataset_name: str
) -> list[dict[str, Any]]:
    """Dataset dicts of one RefCOCO-family split, one per (image, sentence)."""
    splits = REFCOCO_SPLITS.get((dataset, split_by))
    if splits is None or split not in splits:
        raise ValueError(f"unknown split {dataset}/{split_by}/{split}; known: {REFCOCO_SPLITS}")
    require_dir(coco_root, "COCO root for RefCOCO", "set $DETECTRON2_DATASETS")
    ann_dir = require_dir(coco_root / dataset, f"{dataset} annotations")
    refs_path = require_file(ann_dir / f"refs({split_by}).p", f"{dataset} refs")
    instances_path = require_file(ann_dir / "instances.json", f"{dataset} instances")
    image_dir = require_dir(coco_root / "train2014", "COCO train2014 images")
    images, anns = _index_instances(instances_path)

    rles: dict[int, dict] = {}
    checked: set[int] = set()
    dicts = []
    for ref in load_refs(refs_path):
        try:
            if ref["split"] != split:
                continue
            ref_id, ann_id, image_id = ref["ref_id"], ref["ann_id"], ref["image_id"]
            sentences = ref["sentences"]
        except KeyError as err:
            raise ValueError(f"{refs_path}: ref lacks key {err}: {ref}") from err
        where = f"{refs_path} ref {ref_id}"
        if image_id not in images:
            raise ValueError(f"{where}: image {image_id} is not in {instances_path}")
        if ann_id not in anns:
            raise ValueError(f"{where}: annotation {ann_id} is not in {instances_path}")
        image = images[image_id]
        height, width = int(image["height"]), int(image["width"])
        image_path = image_dir / image["file_name"]
        if image_id not in checked:
            require_file(image_path, f"COCO image of {where}")
            checked.add(image_id)
        if ann_id not in rles:
            rles[ann_id] = annotation_rle(anns[ann_id], height, width, str(instances_path))
        if not sentences:
            raise ValueError(f"{where}: no sentences")
        for sentence in sentences:
            sent_id = sentence.get("sent_id")
            expression = clean_expression(sentence.get("sent", ""), f"{where} sentence {sent_id}")
            dicts.append(
                rvos_record(
                    dataset_name=dataset_name,
                    video_id=str(image_id),
                    exp_id=str(sent_id),
                    expression=expression,
                    file_names=[str(image_path)],
                    frame_names=[Path(image["file_name"]).stem],
                    height=height,
                    width=width,
                    obj_ids=[ann_id],
                    mask_annotations=[{"type": "rle", "rle": rles[ann_id]}],
                    is_image=True,
                    ref_id=ref_id,
                    category_id=ref.get("category_id", anns[ann_id].get("category_id")),
                )
            )
    return dicts


def register_refcoco() -> None:
    """Registers `<dataset>_<split_by>_<split>`, e.g. refcoco_unc_train, refcocog_umd_test."""
    for (dataset, split_by), splits in REFCOCO_SPLITS.items():
        for split in splits:
            name = f"{dataset}_{split_by}_{split}"
            register_lazy(
                name,
                functools.partial(_load_from_root, dataset, split_by, split, name),
                evaluator_type="rvos",
            )


def _load_from_root(dataset: str, split_by: str, split: str, name: str) -> list[dict[str, Any]]:
    return load_refcoco(datasets_root() / "coco", dataset, split_by, split, name)


register_refcoco()
