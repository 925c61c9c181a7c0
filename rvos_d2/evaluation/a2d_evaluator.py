"""A2D-Sentences / JHMDB-Sentences evaluation: each annotated frame of a (video, expression) is one
sample scored by prec@0.5..0.9, overall IoU, mean IoU and COCO mask AP (fractions in [0, 1]).

Detections for AP are the thresholded per-frame masks ranked by the model's per-frame `scores`;
when the output also holds every query slot of the annotated frames (`query_frames`,
`query_scores`, `query_masks`: the published ReferFormer evaluation), every slot is a detection,
while IoU and prec@t still score `pred_masks` (the best-scored slot).
"""

from __future__ import annotations

import csv
import logging
import os
from collections import OrderedDict
from typing import Any

import numpy as np

from rvos_d2.data.mask_io import load_target_mask
from rvos_d2.evaluation import metrics
from rvos_d2.evaluation.build import EVALUATOR_REGISTRY
from rvos_d2.evaluation.predictions import (
    find_dataset_dict,
    gather_records,
    index_dataset,
    predicted_frames,
)

from detectron2.evaluation import DatasetEvaluator

logger = logging.getLogger(__name__)


def score_samples(
    model_input: dict[str, Any], output: dict[str, Any], dataset_dict: dict[str, Any]
) -> list[dict[str, Any]]:
    """One sample per annotated frame: counts for IoU, RLEs and the score for AP."""
    video, exp = dataset_dict["video_id"], dataset_dict["exp_id"]
    scores = output.get("scores")
    if scores is None or len(scores) != len(model_input["frame_ids"]):
        raise ValueError(
            f"video {video!r} expression {exp!r}: A2D evaluation needs output 'scores' with one "
            f"value per frame of frame_ids ({len(model_input['frame_ids'])}), got "
            f"{None if scores is None else tuple(scores.shape)}"
        )
    annotated = [i for i, ann in enumerate(dataset_dict["mask_annotations"]) if ann is not None]
    slots = _query_slots(output, f"video {video!r} expression {exp!r}")
    samples = []
    for frame, row, pred in predicted_frames(model_input, output, dataset_dict, annotated):
        gt = load_target_mask(dataset_dict, frame)
        inter, union = metrics.intersection_union(pred, gt)
        sample = {
            "video_id": video,
            "exp_id": exp,
            "frame": dataset_dict["frame_names"][frame],
            "I": inter,
            "U": union,
            "score": float(scores[row]),
            "gt_rle": metrics.encode_mask(gt),
            "pred_rle": metrics.encode_mask(pred),
        }
        if slots is not None:
            if row not in slots:
                raise ValueError(
                    f"video {video!r} expression {exp!r}: output query_frames lacks annotated "
                    f"frame {dataset_dict['frame_names'][frame]} (row {row})"
                )
            slot_scores, slot_masks = slots[row]
            sample["det_rles"] = [metrics.encode_mask(m) for m in slot_masks]
            sample["det_scores"] = [float(s) for s in slot_scores]
        samples.append(sample)
    return samples


def _query_slots(output: dict[str, Any], label: str) -> dict[int, tuple[Any, np.ndarray]] | None:
    """row -> (N scores, N x H x W bool masks) from the optional query_* outputs, or None."""
    if "query_frames" not in output:
        return None
    rows, scores, masks = (output[k] for k in ("query_frames", "query_scores", "query_masks"))
    if not len(rows) == len(scores) == len(masks):
        raise ValueError(
            f"{label}: {len(rows)} query_frames, {len(scores)} query_scores and {len(masks)} "
            "query_masks; one of each per annotated frame is needed"
        )
    masks = np.asarray(masks.cpu() if hasattr(masks, "cpu") else masks) > 0.5
    return {int(r): (s, m) for r, s, m in zip(rows, scores, masks)}


def summarize_samples(samples: list[dict[str, Any]]) -> OrderedDict[str, float]:
    """prec@t, overall_IoU, mean_IoU and mask mAP / AP50 / AP75 over annotated-frame samples
    (AP from a sample's `det_rles` / `det_scores` when it has them)."""
    ious = [metrics.iou_from_counts(s["I"], s["U"]) for s in samples]
    summary: OrderedDict[str, float] = OrderedDict(metrics.precision_at(ious))
    summary["overall_IoU"] = metrics.overall_iou(
        [s["I"] for s in samples], [s["U"] for s in samples]
    )
    summary["mean_IoU"] = float(np.mean(ious))
    summary.update(
        metrics.mask_average_precision(
            [s["gt_rle"] for s in samples],
            [s.get("det_rles", s["pred_rle"]) for s in samples],
            [s.get("det_scores", s["score"]) for s in samples],
        )
    )
    return summary


def write_per_frame_csv(samples: list[dict[str, Any]], path: str) -> None:
    """One row per sample: video_id, exp_id, frame, IoU, score."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "exp_id", "frame", "IoU", "score"])
        for s in sorted(samples, key=lambda s: (s["video_id"], s["exp_id"], s["frame"])):
            iou = metrics.iou_from_counts(s["I"], s["U"])
            writer.writerow([s["video_id"], s["exp_id"], s["frame"], f"{iou:.6f}", s["score"]])


@EVALUATOR_REGISTRY.register_as("a2d")
class A2DEvaluator(DatasetEvaluator):
    """Frame-level referring segmentation metrics on annotated frames; results under "a2d"."""

    def __init__(self, dataset_name: str, output_dir: str | None = None, distributed: bool = True):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._index = index_dataset(dataset_name)
        self._samples: list[dict[str, Any]] = []

    def reset(self) -> None:
        self._samples = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        for model_input, output in zip(inputs, outputs):
            dataset_dict = find_dataset_dict(self._index, self._dataset_name, model_input)
            self._samples.extend(score_samples(model_input, output, dataset_dict))

    def evaluate(self) -> OrderedDict[str, dict[str, float]] | dict:
        samples = gather_records(self._samples, self._distributed)
        if samples is None:
            return {}
        if not samples:
            logger.warning("A2DEvaluator on %s scored no annotated frame", self._dataset_name)
            return {}
        keys = [(s["video_id"], s["exp_id"], s["frame"]) for s in samples]
        if len(set(keys)) != len(keys):
            raise ValueError(
                f"some annotated frames of {self._dataset_name!r} were processed more than once; "
                f"call reset() before a new evaluation round"
            )
        summary = summarize_samples(samples)
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, f"{self._dataset_name}_per_frame.csv")
            write_per_frame_csv(samples, path)
            logger.info("per-frame IoU of %s written to %s", self._dataset_name, path)
        return OrderedDict(a2d=dict(summary))
