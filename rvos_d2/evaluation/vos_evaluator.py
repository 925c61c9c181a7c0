"""Semi-supervised VOS evaluation: J&F per object (DAVIS protocol) or a YouTube-VOS submission.

The model output of one video is {"pred_masks": N x K x height x width probabilities for every
frame of the video, at the original size, "obj_ids": [K]}. Each frame becomes one label map:
background gets probability 1 - sum of the objects' (the remainder of a soft aggregation such
as STCN's, whose argmax this reproduces; with one object a pixel is foreground when p > 0.5), an
object counts only from its reference frame on, and the argmax picks the label (ties go to the
background, then to the lower row). Objects the output lacks are never predicted, as the
official evaluation pads missing objects with empty masks; an object id the video does not have
is an error.

Scoring (datasets whose metadata has has_masks=True) follows davis2017-evaluation's
semi-supervised task: it drops the first and the last frame of every sequence (`[1:-1]`) and
scores every object of the first frame on all remaining frames, with J = F = 1 where both masks
are empty; DAVIS void pixels (255) count as background (the semi-supervised path passes no void
mask). Generalised to objects whose reference mask comes later (YouTube-VOS, the synthetic
set): object k is scored on the frames after its reference frame and before the last frame.
Per object, J and F are means over those frames and the recalls the fraction of them above 0.5;
dataset J, F, J_recall, F_recall are means over objects and J&F = (J + F) / 2.

Splits without public masks (YouTube-VOS valid) get the challenge layout instead:
`<output_dir>/Annotations/<video>/<frame>.png`, palette PNGs of object ids for the frames in the
dataset dict's `output_frames` from the first reference frame on, zipped by the main process
into `<output_dir>/submission.zip`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from PIL import Image

from rvos_d2.data.datasets.vos import load_id_map
from rvos_d2.evaluation import metrics
from rvos_d2.evaluation.build import EVALUATOR_REGISTRY
from rvos_d2.evaluation.predictions import gather_records
from rvos_d2.evaluation.submission import (
    ANNOTATIONS_DIR,
    finish_submission,
    require_output_dir,
)

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator

logger = logging.getLogger(__name__)


def label_maps(
    pred_masks: torch.Tensor | np.ndarray,
    pred_obj_ids: list[int],
    dataset_dict: dict[str, Any],
    size: tuple[int, int],
) -> np.ndarray:
    """N x H x W uint8 object-id maps of a video from N x K probabilities (rules: module doc)."""
    label = f"video {dataset_dict['video_id']!r}"
    probs = torch.as_tensor(pred_masks)
    num_frames, obj_ids = dataset_dict["length"], [int(k) for k in pred_obj_ids]
    expected = (num_frames, len(obj_ids), *size)
    if probs.ndim != 4 or tuple(probs.shape) != expected:
        raise ValueError(
            f"{label}: pred_masks has shape {tuple(probs.shape)}, expected {expected} (every "
            f"frame x one row per entry of obj_ids {obj_ids} x the original size)"
        )
    known = dict(zip(dataset_dict["obj_ids"], dataset_dict["first_frames"]))
    unknown = [k for k in obj_ids if k not in known]
    if unknown or len(set(obj_ids)) != len(obj_ids):
        raise ValueError(
            f"{label}: the output's obj_ids {obj_ids} repeat an id or name objects the video "
            f"does not have (its objects: {sorted(known)})"
        )
    starts = torch.tensor([known[k] for k in obj_ids], dtype=torch.long)
    lookup = torch.tensor([0, *obj_ids], dtype=torch.uint8)
    out = np.zeros((num_frames, *size), np.uint8)
    for t in range(num_frames):
        frame = probs[t].detach().cpu().float() * (starts <= t).float()[:, None, None]
        background = (1.0 - frame.sum(0, keepdim=True)).clamp(min=0.0)
        out[t] = lookup[torch.cat([background, frame]).argmax(0)].numpy()
    return out


def scored_frames(first_frame: int, num_frames: int) -> range:
    """Frames on which an object is scored: after its reference frame, before the last frame."""
    return range(first_frame + 1, num_frames - 1)


def score_video(labels: np.ndarray, dataset_dict: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-object records (video_id, obj_id, per-frame J and F) of one video's label maps."""
    num_frames = dataset_dict["length"]
    records = [
        {"video_id": dataset_dict["video_id"], "obj_id": int(k), "J": [], "F": []}
        for k in dataset_dict["obj_ids"]
    ]
    for t in range(num_frames):
        scoring = [
            r
            for r, s in zip(records, dataset_dict["first_frames"])
            if t in scored_frames(s, num_frames)
        ]
        if not scoring:
            continue
        gt = load_id_map(dataset_dict, t)
        if gt is None:
            raise ValueError(
                f"video {dataset_dict['video_id']!r} frame {t} has no annotation to score against"
            )
        if gt.shape != labels[t].shape:
            raise ValueError(
                f"video {dataset_dict['video_id']!r}: annotation of frame {t} is {gt.shape}, the "
                f"prediction {labels[t].shape}"
            )
        for r in scoring:
            pred, target = labels[t] == r["obj_id"], gt == r["obj_id"]
            r["J"].append(metrics.region_similarity(pred, target))
            r["F"].append(metrics.contour_accuracy(pred, target))
    return records


def summarize(records: list[dict[str, Any]]) -> OrderedDict[str, float]:
    """Dataset J, F, JF and recalls: means over the objects with at least one scored frame."""
    scored = [r for r in records if r["J"]]
    if len(scored) < len(records):
        logger.warning("%d objects have no frame to score", len(records) - len(scored))
    if not scored:
        raise ValueError("no object has a frame to score; cannot compute J&F")
    j = float(np.mean([np.mean(r["J"]) for r in scored]))
    f = float(np.mean([np.mean(r["F"]) for r in scored]))
    return OrderedDict(
        J=j,
        F=f,
        JF=(j + f) / 2,
        J_recall=float(np.mean([np.mean(np.asarray(r["J"]) > 0.5) for r in scored])),
        F_recall=float(np.mean([np.mean(np.asarray(r["F"]) > 0.5) for r in scored])),
    )


def write_label_png(path: str, labels: np.ndarray, palette: list[int] | None) -> None:
    """Writes an H x W object-id map as a palette PNG (a grey PNG when no palette is known)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    mode = "L" if palette is None else "P"
    img = Image.frombytes(mode, (labels.shape[1], labels.shape[0]), labels.tobytes())
    if palette is not None:
        img.putpalette(palette)
    try:
        img.save(path)
    except OSError as err:
        raise OSError(f"could not write mask image {path}: {err}") from err


def _reference_palette(dataset_dict: dict[str, Any]) -> list[int] | None:
    """The palette of the video's first reference annotation (the release's own colours)."""
    ann = dataset_dict["mask_annotations"][min(dataset_dict["first_frames"])]
    if ann is None or ann.get("type") != "palette_png":
        return None
    try:
        with Image.open(ann["file"]) as img:
            return img.getpalette() if img.mode == "P" else None
    except OSError as err:
        raise OSError(f"cannot read the palette of annotation {ann['file']}: {err}") from err


@EVALUATOR_REGISTRY.register_as("vos")
class VOSEvaluator(DatasetEvaluator):
    """J&F of a VOS dataset with masks (results under "vos"), else a submission zip."""

    def __init__(self, dataset_name: str, output_dir: str | None = None, distributed: bool = True):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._has_masks = bool(MetadataCatalog.get(dataset_name).get("has_masks", True))
        if not self._has_masks:
            require_output_dir(dataset_name, output_dir)
        self._index: dict[str, dict[str, Any]] = {}
        for d in DatasetCatalog.get(dataset_name):
            if d["video_id"] in self._index:
                raise ValueError(f"dataset {dataset_name!r} lists video {d['video_id']!r} twice")
            self._index[d["video_id"]] = d
        self._records: list[dict[str, Any]] = []
        self._written: list[str] = []

    def reset(self) -> None:
        self._records = []
        self._written = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        for model_input, output in zip(inputs, outputs):
            d = self._dataset_dict(model_input)
            if "pred_masks" not in output or "obj_ids" not in output:
                raise KeyError(f"video {d['video_id']!r}: the output needs pred_masks and obj_ids")
            frame_ids = [int(f) for f in model_input.get("frame_ids", range(d["length"]))]
            if frame_ids != list(range(d["length"])):
                raise ValueError(
                    f"video {d['video_id']!r}: VOS evaluation needs every frame in order, got "
                    f"frame_ids {frame_ids}"
                )
            size = (int(model_input["height"]), int(model_input["width"]))
            labels = label_maps(output["pred_masks"], output["obj_ids"], d, size)
            if self._has_masks:
                self._records.extend(score_video(labels, d))
            else:
                self._write_video(labels, d)

    def _dataset_dict(self, model_input: dict[str, Any]) -> dict[str, Any]:
        source = model_input.get("dataset_name", self._dataset_name)
        if source != self._dataset_name:
            raise ValueError(
                f"an input from dataset {source!r} was given to the evaluator of "
                f"{self._dataset_name!r}"
            )
        if model_input["video_id"] not in self._index:
            raise KeyError(f"video {model_input['video_id']!r} is not in {self._dataset_name!r}")
        return self._index[model_input["video_id"]]

    def _write_video(self, labels: np.ndarray, d: dict[str, Any]) -> None:
        palette = _reference_palette(d)
        start = min(d["first_frames"])
        for t in d["output_frames"]:
            if t < start:
                continue
            rel = os.path.join(ANNOTATIONS_DIR, d["video_id"], f"{d['frame_names'][t]}.png")
            write_label_png(os.path.join(self._output_dir, rel), labels[t], palette)
            self._written.append(rel)

    def evaluate(self) -> OrderedDict[str, dict[str, float]] | dict:
        if not self._has_masks:
            finish_submission(
                self._written, self._dataset_name, self._output_dir, self._distributed, "label maps"
            )
            return {}
        records = gather_records(self._records, self._distributed)
        if records is None:
            return {}
        if not records:
            logger.warning("VOSEvaluator on %s received no predictions", self._dataset_name)
            return {}
        keys = [(r["video_id"], r["obj_id"]) for r in records]
        if len(set(keys)) != len(keys):
            raise ValueError(
                f"some videos of {self._dataset_name!r} were processed more than once; call "
                f"reset() before a new evaluation round"
            )
        videos = {r["video_id"] for r in records}
        if len(videos) < len(self._index):
            logger.warning(
                "%s: only %d of its %d videos were evaluated",
                self._dataset_name,
                len(videos),
                len(self._index),
            )
        summary = summarize(records)
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, f"{self._dataset_name}_per_object.csv")
            self._write_csv(records, path)
            logger.info("per-object J&F of %s written to %s", self._dataset_name, path)
        return OrderedDict(vos=dict(summary))

    @staticmethod
    def _write_csv(records: list[dict[str, Any]], path: str) -> None:
        """One row per scored object: video_id, obj_id, J, F, JF and the number of frames."""
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["video_id", "obj_id", "J", "F", "JF", "frames"])
            for r in sorted(records, key=lambda r: (r["video_id"], r["obj_id"])):
                if not r["J"]:
                    continue
                j, fm = float(np.mean(r["J"])), float(np.mean(r["F"]))
                writer.writerow(
                    [
                        r["video_id"],
                        r["obj_id"],
                        f"{j:.6f}",
                        f"{fm:.6f}",
                        f"{(j + fm) / 2:.6f}",
                        len(r["J"]),
                    ]
                )
