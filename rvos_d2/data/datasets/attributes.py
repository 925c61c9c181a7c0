"""Per-pixel object attributes of a YouTube-VOS-layout root, for dense attribute pretraining.

Reads `<root>/<split>/meta.json` ({"videos": {video: {"objects": {id: {"category": str, ...}}}}};
the synthetic dataset also records "colour", "size" and "motion"), `JPEGImages/<video>/*.jpg`
and `Annotations/<video>/<frame>.png` (pixel = object id). One dataset dict per video:
dataset_name, video_id, file_names and annotation_files (temporal order), length, height /
width (None when meta.json lacks them) and object_labels {object id: {attribute: k + 1 for the
k-th value of the dataset's `attribute_classes`}} (0 is the background).

An attribute's values are those the vocabulary split (the training split) records, sorted, so a
held-out split is labelled with the classes the model was trained on; loading a dataset sets its
metadata `attribute_classes` ({attribute: [values]}).

Registered: rvos_synth_attributes_{train,valid} (the synthetic dataset's train and valid
videos, category, colour, size and motion).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rvos_d2.data.datasets.ref_ytvos import check_root, read_videos
from rvos_d2.data.datasets.registration import register_replacing, require_file, resolve_root

from detectron2.data import MetadataCatalog

SYNTH_ATTRIBUTES = ("category", "colour", "size", "motion")
SYNTH_ATTRIBUTE_SPLITS = ("train", "valid")


def _objects(videos: dict[str, Any], meta_path: Path) -> dict[str, dict[str, Any]]:
    """video -> its 'objects' mapping, checking the layout."""
    objects = {}
    for video_id, entry in videos.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("objects"), dict):
            raise ValueError(f"{meta_path}: video {video_id!r} has no 'objects' mapping")
        objects[video_id] = entry["objects"]
    return objects


def attribute_vocabulary(meta_path: Path, attributes: list[str]) -> dict[str, list[str]]:
    """The sorted values of each attribute over every object of a meta.json."""
    objects = _objects(read_videos(str(meta_path), "attribute meta file"), meta_path)
    vocab: dict[str, set[str]] = {name: set() for name in attributes}
    for video_id, video_objects in objects.items():
        for obj_id, obj in video_objects.items():
            for name in attributes:
                if not isinstance(obj, dict) or name not in obj:
                    raise ValueError(
                        f"{meta_path}: video {video_id!r} object {obj_id!r} has no attribute "
                        f"{name!r}"
                    )
                vocab[name].add(str(obj[name]))
    return {name: sorted(values) for name, values in vocab.items()}


def load_attribute_videos(
    root: str, split: str, dataset_name: str, attributes: list[str], vocab_split: str
) -> list[dict[str, Any]]:
    """Dataset dicts of `split`, labelled with the attribute values of `vocab_split`."""
    check_root(root, dataset_name)
    vocab = attribute_vocabulary(Path(root) / vocab_split / "meta.json", attributes)
    split_dir = Path(root) / split
    meta_path = split_dir / "meta.json"
    videos = read_videos(str(meta_path), f"dataset {dataset_name}: object meta file")
    dicts = []
    for video_id, video_objects in sorted(_objects(videos, meta_path).items()):
        labels = {}
        for obj_id, obj in video_objects.items():
            if not str(obj_id).isdigit():
                raise ValueError(f"{meta_path}: video {video_id!r} has a non-numeric object id")
            labels[int(obj_id)] = {}
            for name in attributes:
                value = str(obj.get(name)) if isinstance(obj, dict) and name in obj else None
                if value not in vocab[name]:
                    raise ValueError(
                        f"{meta_path}: video {video_id!r} object {obj_id!r} has {name} "
                        f"{value!r}, not among the values of split {vocab_split!r}: "
                        f"{vocab[name]}"
                    )
                labels[int(obj_id)][name] = vocab[name].index(value) + 1
        image_dir = split_dir / "JPEGImages" / video_id
        frames = sorted(p.stem for p in image_dir.glob("*.jpg"))
        if not frames:
            raise FileNotFoundError(f"dataset {dataset_name}: no .jpg frame in {image_dir}")
        annotations = [
            require_file(
                split_dir / "Annotations" / video_id / f"{name}.png",
                f"dataset {dataset_name}: annotation of {image_dir / (name + '.jpg')}",
            )
            for name in frames
        ]
        dicts.append(
            {
                "dataset_name": dataset_name,
                "video_id": video_id,
                "file_names": [str(image_dir / f"{name}.jpg") for name in frames],
                "annotation_files": [str(path) for path in annotations],
                "length": len(frames),
                "height": videos[video_id].get("height"),
                "width": videos[video_id].get("width"),
                "object_labels": labels,
            }
        )
    metadata = MetadataCatalog.get(dataset_name)
    if metadata.get("attribute_classes") != vocab:  # $DETECTRON2_DATASETS may change between loads
        vars(metadata).pop("attribute_classes", None)
        metadata.set(attribute_classes=vocab)
    return dicts


def register_synthetic_attributes(
    root: str | os.PathLike | None = None, prefix: str = "rvos_synth_attributes"
) -> list[str]:
    """Registers `<prefix>_{train,valid}` over the synthetic dataset at `root` (None:
    `$DETECTRON2_DATASETS/rvos_synth`, resolved when loading); returns the names."""
    root = None if root is None else str(root)
    names = []
    for split in SYNTH_ATTRIBUTE_SPLITS:
        name = f"{prefix}_{split}"
        register_replacing(
            name,
            lambda split=split, name=name: load_attribute_videos(
                resolve_root(root, "rvos_synth"), split, name, list(SYNTH_ATTRIBUTES), "train"
            ),
            evaluator_type="attributes",
            attribute_names=list(SYNTH_ATTRIBUTES),
            dataset_root=root,
            split=split,
        )
        names.append(name)
    return names


register_synthetic_attributes()
