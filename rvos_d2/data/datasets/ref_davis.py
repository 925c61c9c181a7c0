"""Ref-DAVIS17: DAVIS-2017 with the referring expressions of two annotators.

Release layout (`tools/convert_davis_to_ytvos.py --davis-root` points at its parent):
  DAVIS/JPEGImages/480p/<video>/<frame>.jpg
  DAVIS/Annotations/480p/<video>/<frame>.png      palette masks, pixel value = object id
  DAVIS/ImageSets/2017/{train,val}.txt
  davis_text_annotations/Davis17_annot{1,2}[_full_video].txt
                                                  lines `video obj_id "expression"`
The conversion writes the Ref-YouTube-VOS layout that `ref_davis_{train,valid}` read with the
Ref-YouTube-VOS loader (`$DETECTRON2_DATASETS/ref-davis`):
  {train,valid}/{JPEGImages,Annotations}/<video>/   the DAVIS frame and mask folders
  {train,valid}/meta.json                           objects, frames where each appears, size
  meta_expressions/{train,valid}/meta_expressions.json
Each expression keeps its `annotator` (1 or 2) and `expression_type` ("first_frame": written
from the first frame only, "full_video": from the whole video); exp_id is
`<obj_id>_a<annotator>_<first|full>`. The protocol scores each (annotator, expression_type)
group separately and averages, so the metadata names these keys in `eval_group_by`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from rvos_d2.data.datasets.ref_ytvos import load_ref_ytvos, read_videos
from rvos_d2.data.datasets.registration import datasets_root, register_lazy

# expression type -> tag in exp_id
EXPRESSION_TYPE_TAGS = {"first_frame": "first", "full_video": "full"}
# DAVIS image set -> split folder of the converted layout
SPLITS = {"train": "train", "val": "valid"}


def load_ref_davis(root: Path, split: str, dataset_name: str) -> list[dict[str, Any]]:
    """Dataset dicts of a converted Ref-DAVIS17 split ("train" or "valid")."""
    root_str = str(root)
    dicts = load_ref_ytvos(root_str, split, dataset_name, has_masks=True)
    exp_path = root / "meta_expressions" / split / "meta_expressions.json"
    videos = read_videos(str(exp_path), f"dataset {dataset_name}: expressions file")
    meta = read_videos(str(root / split / "meta.json"), f"dataset {dataset_name}: object meta file")
    for d in dicts:
        exp = videos[d["video_id"]]["expressions"][d["exp_id"]]
        size = meta[d["video_id"]]
        if "annotator" not in exp or "expression_type" not in exp or "height" not in size:
            raise ValueError(
                f"{exp_path}: video {d['video_id']} expression {d['exp_id']} has no annotator / "
                f"expression type (or meta.json no size): convert the release with "
                f"tools/convert_davis_to_ytvos.py"
            )
        d["annotator"] = int(exp["annotator"])
        d["expression_type"] = exp["expression_type"]
        d["height"], d["width"] = int(size["height"]), int(size["width"])
    return dicts


def register_ref_davis() -> None:
    """Registers ref_davis_train and ref_davis_valid (converted layout, evaluator_type "rvos")."""
    for split in SPLITS.values():
        name = f"ref_davis_{split}"
        register_lazy(
            name,
            functools.partial(_load_from_root, split, name),
            evaluator_type="rvos",
            eval_group_by=("annotator", "expression_type"),
            merge_objects_by=("annotator", "expression_type"),  # one label map per annotation
            annotators=(1, 2),
            expression_types=tuple(EXPRESSION_TYPE_TAGS),
        )


def _load_from_root(split: str, name: str) -> list[dict[str, Any]]:
    return load_ref_davis(datasets_root() / "ref-davis", split, name)


register_ref_davis()
