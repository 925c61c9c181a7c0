"""A2D-Sentences and JHMDB-Sentences, read from their released annotation files.

A2D-Sentences (`$DETECTRON2_DATASETS/a2d_sentences`):
  Release/videoset.csv                      video, label, ..., subset (0 train, 1 test), no header
  Release/clips320H/<video>.mp4             the released clips
  Release/JPEGImages/<video>/<n>.png|jpg    frames extracted from the clips, numbered from 1
  text_annotations/a2d_annotation.txt       video_id,instance_id,query (CSV with a header)
  text_annotations/a2d_missed_videos.txt    videos without sentences
  text_annotations/a2d_annotation_with_instances/<video>/<n>.h5
                                            MATLAB v7.3 (HDF5) files of the annotated frames:
                                            `reMask` (N x W x H, or W x H for one instance),
                                            `instance` (N ids), `reBBox` (4 x N)
JHMDB-Sentences (`$DETECTRON2_DATASETS/jhmdb_sentences`), used for evaluation only:
  jhmdb_annotation.txt                      video_id,query (CSV with a header)
  Rename_Images/<class>/<video>/<n>.png     frames numbered from 1
  puppet_mask/<class>/<video>/puppet_mask.mat   `part_mask`, H x W x T (MATLAB v5)
  jhmdb_sentences_samples_metadata.json     optional: the 3 frames per video that the published
                                            evaluations (MTTR, ReferFormer) score, as rows
                                            [video, frame path, mask path, frames, sentence]

One dataset dict per sentence. Only annotated frames are scored: in A2D a frame carries a mask
when its .h5 file exists and lists the referred instance; in JHMDB every frame covered by the
puppet mask does, or only the frames the samples metadata lists when it is present. Other frames
have `mask_annotations[i] = None`.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io

from rvos_d2.data import mask_io
from rvos_d2.data.datasets.registration import (
    clean_expression,
    datasets_root,
    register_lazy,
    require_dir,
    require_file,
    rvos_record,
)

logger = logging.getLogger(__name__)

A2D_SPLITS = {"train": 0, "test": 1}
# Instance ids of the official a2d_annotation.txt that duplicate another row ("1 (copy)" in
# video T6bNPuKV-wY); such rows are dropped with a warning, any other non-integer id is an error.
_A2D_DUPLICATE_SUFFIX = " (copy)"
_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
JHMDB_SAMPLES_FILE = "jhmdb_sentences_samples_metadata.json"


# ---------------------------------------------------------------------------- mask readers
def _a2d_header(f: h5py.File, path: str | Path) -> tuple[np.ndarray, tuple[int, ...]]:
    """Instance ids and reMask shape of an open A2D .h5 annotation, checked for consistency."""
    try:
        ids = np.asarray(f["instance"][()]).reshape(-1).astype(np.int64)
        shape = f["reMask"].shape
    except KeyError as err:
        raise ValueError(f"malformed A2D annotation {path}: {err}") from err
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or shape[0] != len(ids):
        raise ValueError(
            f"malformed A2D annotation {path}: reMask has shape {f['reMask'].shape} "
            f"for {len(ids)} instances"
        )
    return ids, shape


def _open_h5(path: str | Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise OSError(f"cannot read A2D annotation {path}: {err}") from err


def read_a2d_instances(path: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Instance ids and (H, W) of an A2D .h5 annotation, without reading the masks."""
    with _open_h5(path) as f:
        ids, shape = _a2d_header(f, path)
    return ids, (int(shape[2]), int(shape[1]))


def read_a2d_masks(path: str | Path, instance_ids: list[int]) -> np.ndarray:
    """The union (H x W bool) of the given instances' masks in an A2D .h5 annotation.

    MATLAB writes column-major arrays, so HDF5 holds each mask as W x H: it is transposed here.
    """
    with _open_h5(path) as f:
        ids, shape = _a2d_header(f, path)
        missing = [i for i in instance_ids if i not in ids]
        if missing:
            raise ValueError(f"A2D annotation {path} lacks instance {missing}: has {ids.tolist()}")
        masks = np.asarray(f["reMask"][()]).reshape(shape)  # N x W x H
    return np.any(masks[np.isin(ids, instance_ids)] > 0, axis=0).T


@functools.lru_cache(maxsize=4)
def _load_part_mask(path: str) -> np.ndarray:
    try:
        part_mask = scipy.io.loadmat(path)["part_mask"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot read JHMDB puppet mask {path}: {err}") from err
    if part_mask.ndim != 3:
        raise ValueError(f"malformed JHMDB puppet mask {path}: part_mask is {part_mask.shape}")
    return part_mask


def read_jhmdb_mask(path: str | Path, frame: int) -> np.ndarray:
    """Frame `frame` (0-based) of a JHMDB puppet mask (`part_mask` is H x W x T) as H x W bool."""
    part_mask = _load_part_mask(str(path))
    if not 0 <= frame < part_mask.shape[2]:
        raise ValueError(
            f"JHMDB puppet mask {path} has {part_mask.shape[2]} frames, frame {frame} asked"
        )
    return part_mask[:, :, frame] > 0


@mask_io.MASK_READER_REGISTRY.register_as("a2d_h5")
def _a2d_h5_reader(ann: dict[str, Any], obj_ids: list[int]) -> np.ndarray:
    return read_a2d_masks(ann["file"], obj_ids)


@mask_io.MASK_READER_REGISTRY.register_as("jhmdb_mat")
def _jhmdb_mat_reader(ann: dict[str, Any], obj_ids: list[int]) -> np.ndarray:
    return read_jhmdb_mask(ann["file"], ann["frame"])


# ---------------------------------------------------------------------------- shared helpers
def _numbered_frames(folder: Path, what: str) -> list[Path]:
    """Frame files of `folder` sorted by their number (file stem), checking stems are numbers."""
    frames = [p for p in folder.iterdir() if p.suffix.lower() in _FRAME_SUFFIXES]
    if not frames:
        raise FileNotFoundError(f"{what}: no frame images (.png/.jpg) in {folder}")
    bad = [p.name for p in frames if not p.stem.isdigit()]
    if bad:
        raise ValueError(f"{what}: frame files must be numbered (00001.png ...); found {bad[:3]}")
    return sorted(frames, key=lambda p: int(p.stem))


def _read_csv(path: Path, columns: int, header: bool) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty row; raises naming the file and line if malformed."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [(i + 1, row) for i, row in enumerate(csv.reader(f)) if any(x.strip() for x in row)]
    if header:
        rows = rows[1:]
    for line, row in rows:
        if len(row) != columns:
            raise ValueError(f"{path}:{line}: expected {columns} comma-separated fields, got {row}")
    return rows


def _video_record(
    dataset_name: str,
    video_id: str,
    exp_id: str,
    expression: str,
    frames: list[Path],
    size: tuple[int, int],
    obj_ids: list[int],
    mask_annotations: list[dict | None],
) -> dict[str, Any]:
    return rvos_record(
        dataset_name=dataset_name,
        video_id=video_id,
        exp_id=exp_id,
        expression=expression,
        file_names=[str(p) for p in frames],
        frame_names=[p.stem for p in frames],
        height=size[0],
        width=size[1],
        obj_ids=obj_ids,
        mask_annotations=mask_annotations,
    )


# ---------------------------------------------------------------------------- A2D-Sentences
def _a2d_split_videos(videoset: Path, split: str) -> tuple[list[str], set[str]]:
    """Videos of `split` (file order) and every video listed in videoset.csv."""
    rows = _read_csv(videoset, columns=9, header=False)
    in_split, known = [], set()
    for line, row in rows:
        video, subset = row[0].strip(), row[8].strip()
        if subset not in ("0", "1"):
            raise ValueError(f"{videoset}:{line}: subset must be 0 (train) or 1 (test): {subset}")
        known.add(video)
        if int(subset) == A2D_SPLITS[split]:
            in_split.append(video)
    return in_split, known


def _a2d_sentences(path: Path) -> dict[str, list[tuple[int, str, int]]]:
    """video -> [(instance id, query, line number)] from a2d_annotation.txt."""
    sentences: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for line, (video, instance, query) in _read_csv(path, columns=3, header=True):
        instance = instance.strip()
        if instance.endswith(_A2D_DUPLICATE_SUFFIX):
            logger.warning(f"{path}:{line}: skipping duplicated annotation instance {instance!r}")
            continue
        if not instance.isdigit():
            raise ValueError(f"{path}:{line}: instance_id must be an integer, got {instance!r}")
        query = clean_expression(query, f"{path}:{line} (video {video})")
        sentences[video.strip()].append((int(instance), query, line))
    return sentences


def _a2d_frames(release: Path, video: str) -> list[Path]:
    folder = release / "JPEGImages" / video
    if not folder.is_dir():
        clip = release / "clips320H" / f"{video}.mp4"
        raise FileNotFoundError(
            f"frames of A2D video {video} are not extracted: {folder} is missing. Extract every "
            f"frame of {clip}, numbered from 1 like the .h5 annotations, e.g. `mkdir -p {folder} "
            f"&& ffmpeg -i {clip} -fps_mode passthrough -start_number 1 {folder}/%05d.png`"
        )
    return _numbered_frames(folder, f"A2D video {video}")


def _a2d_annotated_frames(
    ann_dir: Path, video: str
) -> tuple[dict[int, tuple[Path, set[int]]], tuple[int, int]]:
    """frame number -> (.h5 path, instance ids) for one video, and the annotation size (H, W)."""
    require_dir(ann_dir, f"A2D instance annotations of video {video}")
    annotated, sizes = {}, set()
    for path in sorted(ann_dir.glob("*.h5")):
        if not path.stem.isdigit():
            raise ValueError(f"A2D annotation {path}: file name must be the frame number")
        ids, size = read_a2d_instances(path)
        annotated[int(path.stem)] = (path, set(ids.tolist()))
        sizes.add(size)
    if not annotated:
        raise FileNotFoundError(f"A2D video {video}: no .h5 annotation in {ann_dir}")
    if len(sizes) != 1:
        raise ValueError(f"A2D video {video}: annotations in {ann_dir} differ in size: {sizes}")
    return annotated, sizes.pop()


def load_a2d_sentences(root: Path, split: str, dataset_name: str) -> list[dict[str, Any]]:
    """Dataset dicts of A2D-Sentences `split` ("train" or "test"), one per sentence."""
    if split not in A2D_SPLITS:
        raise ValueError(f"unknown A2D-Sentences split {split!r}; known: {sorted(A2D_SPLITS)}")
    require_dir(root, "A2D-Sentences root", "set $DETECTRON2_DATASETS")
    release, text = root / "Release", root / "text_annotations"
    videos, known = _a2d_split_videos(require_file(release / "videoset.csv", "A2D split"), split)
    missed_file = require_file(text / "a2d_missed_videos.txt", "A2D missed-video list")
    missed = set(missed_file.read_text(encoding="utf-8").split())
    sentences = _a2d_sentences(require_file(text / "a2d_annotation.txt", "A2D sentences"))
    unknown = sorted(set(sentences) - known)
    if unknown:
        raise ValueError(f"{text / 'a2d_annotation.txt'}: videos not in videoset.csv: {unknown}")

    dicts = []
    for video in videos:
        if video in missed or video not in sentences:
            continue
        frames = _a2d_frames(release, video)
        index = {int(p.stem): i for i, p in enumerate(frames)}
        ann_dir = text / "a2d_annotation_with_instances" / video
        annotated, size = _a2d_annotated_frames(ann_dir, video)
        absent = sorted(n for n in annotated if n not in index)
        if absent:
            raise FileNotFoundError(
                f"A2D video {video}: annotated frames {absent} have no frame file in "
                f"{frames[0].parent} ({len(frames)} frames found)"
            )
        per_instance: dict[int, int] = defaultdict(int)
        for instance, query, line in sentences[video]:
            if not any(instance in ids for _, ids in annotated.values()):
                raise ValueError(
                    f"{text / 'a2d_annotation.txt'}:{line}: video {video} has no instance "
                    f"{instance} in any annotation of {ann_dir}"
                )
            masks: list[dict | None] = [None] * len(frames)
            for number, (path, ids) in annotated.items():
                if instance in ids:
                    masks[index[number]] = {"type": "a2d_h5", "file": str(path)}
            exp_id = f"{instance}_{per_instance[instance]}"
            per_instance[instance] += 1
            d = _video_record(dataset_name, video, exp_id, query, frames, size, [instance], masks)
            dicts.append(d)
    return dicts


# ---------------------------------------------------------------------------- JHMDB-Sentences
def _jhmdb_video_classes(frames_root: Path) -> dict[str, str]:
    """video -> action class, from the Rename_Images/<class>/<video> folders."""
    classes = {}
    for class_dir in sorted(p for p in frames_root.iterdir() if p.is_dir()):
        for video_dir in class_dir.iterdir():
            if video_dir.is_dir():
                classes[video_dir.name] = class_dir.name
    return classes


def _jhmdb_mask_shape(path: Path) -> tuple[int, int, int]:
    """(H, W, T) of a puppet mask's `part_mask`, read from the .mat header only."""
    try:
        shapes = {name: shape for name, shape, _ in scipy.io.whosmat(str(path))}
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read JHMDB puppet mask {path}: {err}") from err
    shape = shapes.get("part_mask")
    if shape is None or len(shape) != 3:
        raise ValueError(f"malformed JHMDB puppet mask {path}: part_mask is {shape}, not H x W x T")
    return shape


def _jhmdb_chosen_frames(path: Path) -> dict[str, set[int]] | None:
    """video -> frame numbers listed by the samples metadata file, or None without the file."""
    if not path.is_file():
        return None
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        chosen: dict[str, set[int]] = defaultdict(set)
        for video, frame_path, *_ in rows:
            chosen[str(video)].add(int(Path(frame_path).stem))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: rows must be [video, frame path, ...]: {err}") from err
    return chosen


def load_jhmdb_sentences(root: Path, dataset_name: str) -> list[dict[str, Any]]:
    """Dataset dicts of JHMDB-Sentences, one per sentence; every masked frame is scored, or
    only the chosen ones when the samples metadata file is present."""
    require_dir(root, "JHMDB-Sentences root", "set $DETECTRON2_DATASETS")
    chosen = _jhmdb_chosen_frames(root / JHMDB_SAMPLES_FILE)
    ann_file = require_file(root / "jhmdb_annotation.txt", "JHMDB sentences")
    frames_root = require_dir(root / "Rename_Images", "JHMDB frames")
    classes = _jhmdb_video_classes(frames_root)
    per_video: dict[str, int] = defaultdict(int)
    dicts = []
    for line, (video, query) in _read_csv(ann_file, columns=2, header=True):
        video = video.strip()
        query = clean_expression(query, f"{ann_file}:{line} (video {video})")
        if video not in classes:
            raise FileNotFoundError(f"{ann_file}:{line}: no frame folder {frames_root}/*/{video}")
        action = classes[video]
        frames = _numbered_frames(frames_root / action / video, f"JHMDB video {video}")
        mat = root / "puppet_mask" / action / video / "puppet_mask.mat"
        height, width, num_masks = _jhmdb_mask_shape(require_file(mat, "JHMDB puppet mask"))
        masks: list[dict | None] = []
        for p in frames:
            t = int(p.stem) - 1  # frames are numbered from 1, part_mask's T axis from 0
            ann = {"type": "jhmdb_mat", "file": str(mat), "frame": t}
            listed = chosen is None or int(p.stem) in chosen.get(video, ())
            masks.append(ann if t < num_masks and listed else None)
        exp_id = str(per_video[video])
        per_video[video] += 1
        d = _video_record(dataset_name, video, exp_id, query, frames, (height, width), [1], masks)
        d["action"] = action
        dicts.append(d)
    return dicts


# ---------------------------------------------------------------------------- registration
def register_a2d_jhmdb() -> None:
    """Registers a2d_sentences_{train,test} and jhmdb_sentences (evaluator_type "a2d")."""
    for split in A2D_SPLITS:
        name = f"a2d_sentences_{split}"
        register_lazy(
            name,
            functools.partial(_load_a2d_from_root, split, name),
            evaluator_type="a2d",
        )
    register_lazy(
        "jhmdb_sentences",
        lambda: load_jhmdb_sentences(datasets_root() / "jhmdb_sentences", "jhmdb_sentences"),
        evaluator_type="a2d",
    )


def _load_a2d_from_root(split: str, name: str) -> list[dict[str, Any]]:
    return load_a2d_sentences(datasets_root() / "a2d_sentences", split, name)


register_a2d_jhmdb()
