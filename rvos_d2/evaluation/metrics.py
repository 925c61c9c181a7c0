"""Segmentation metrics for referring video object segmentation, as pure numpy functions.

Per frame: region similarity J (IoU) and contour accuracy F, both following the DAVIS-2017
protocol (davis2017-evaluation) including its conventions for empty masks. Over samples:
precision at IoU thresholds, overall and mean IoU (the A2D-Sentences / RefCOCO convention),
and COCO mask AP through pycocotools. Every value is a fraction in [0, 1].
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

BOUNDARY_THRESHOLD = 0.008  # DAVIS: boundary tolerance as a fraction of the image diagonal
PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def _as_mask_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(
            f"expected two H x W masks of the same size, got pred {pred.shape} and gt {gt.shape}"
        )
    return pred.astype(bool, copy=False), gt.astype(bool, copy=False)


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Pixel counts of pred AND gt and of pred OR gt."""
    pred, gt = _as_mask_pair(pred, gt)
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


def iou_from_counts(intersection: int, union: int) -> float:
    """IoU from pixel counts; an empty union means two empty masks, which agree (IoU = 1)."""
    return 1.0 if union == 0 else intersection / union


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """J: intersection over union; two empty masks agree perfectly (J = 1), as in DAVIS."""
    return iou_from_counts(*intersection_union(pred, gt))


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a bool mask, DAVIS `seg2bmap` convention.

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour
    (outside the image counts as background). Along the last row only the right neighbour is
    compared, along the last column only the lower one, and the bottom-right pixel never is.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected an H x W mask, got shape {mask.shape}")
    bmap = np.zeros_like(mask)
    core = mask[:-1, :-1]
    bmap[:-1, :-1] = (core ^ mask[:-1, 1:]) | (core ^ mask[1:, :-1]) | (core ^ mask[1:, 1:])
    bmap[-1, :-1] = mask[-1, :-1] ^ mask[-1, 1:]
    bmap[:-1, -1] = mask[:-1, -1] ^ mask[1:, -1]
    return bmap


def boundary_radius(height: int, width: int, bound_th: float = BOUNDARY_THRESHOLD) -> int:
    """Match tolerance in pixels: ceil(bound_th * diagonal), or bound_th itself when >= 1."""
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(f"bound_th >= 1 is a pixel radius and must be whole, got {bound_th}")
        return int(bound_th)
    if bound_th <= 0:
        raise ValueError(f"bound_th must be positive, got {bound_th}")
    return int(math.ceil(bound_th * math.hypot(height, width)))


@functools.lru_cache(maxsize=32)
def _disk(radius: int) -> np.ndarray:
    """Structuring element of the offsets (dy, dx) with dy^2 + dx^2 <= radius^2."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def contour_accuracy(
    pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUNDARY_THRESHOLD
) -> float:
    """F: boundary F-measure of pred against gt (DAVIS protocol).

    A boundary pixel of one mask is matched when a boundary pixel of the other lies within a
    disk of radius `boundary_radius`. Without boundary pixels on either side F = 1; on one side
    only, F = 0.
    """
    pred, gt = _as_mask_pair(pred, gt)
    pred_b, gt_b = boundary_map(pred), boundary_map(gt)
    n_pred, n_gt = int(np.count_nonzero(pred_b)), int(np.count_nonzero(gt_b))
    if n_pred == 0 or n_gt == 0:
        return 1.0 if n_pred == n_gt else 0.0
    # Only boundary pixels are read, and every pixel they can match lies in the boundaries'
    # bounding box: dilating that crop gives the full-image result at a fraction of the cost.
    rows = np.flatnonzero((pred_b | gt_b).any(axis=1))
    cols = np.flatnonzero((pred_b | gt_b).any(axis=0))
    crop = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    pred_b, gt_b = pred_b[crop], gt_b[crop]
    disk = _disk(boundary_radius(*pred.shape, bound_th))
    pred_near = cv2.dilate(pred_b.view(np.uint8), disk).view(bool)
    gt_near = cv2.dilate(gt_b.view(np.uint8), disk).view(bool)
    precision = np.count_nonzero(pred_b & gt_near) / n_pred
    recall = np.count_nonzero(gt_b & pred_near) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def precision_at(
    ious: Sequence[float], thresholds: Sequence[float] = PRECISION_THRESHOLDS
) -> dict[str, float]:
    """prec@t: fraction of samples whose IoU is strictly above t (A2D-Sentences convention)."""
    ious = np.asarray(ious, dtype=np.float64)
    if ious.size == 0:
        raise ValueError("precision_at needs at least one IoU")
    return {f"prec@{t:g}": float(np.mean(ious > t)) for t in thresholds}


def overall_iou(intersections: Sequence[int], unions: Sequence[int]) -> float:
    """Cumulative IoU: total intersection over total union (1 when every union is empty)."""
    total_union = float(np.sum(unions))
    return 1.0 if total_union == 0 else float(np.sum(intersections)) / total_union


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of an H x W bool mask (counts as str, so the RLE pickles and serialises)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def mask_average_precision(
    gt_rles: Sequence[dict[str, Any]],
    pred_rles: Sequence[dict[str, Any] | Sequence[dict[str, Any]]],
    scores: Sequence[float | Sequence[float]],
) -> dict[str, float]:
    """COCO mask AP of one-target-per-image samples: mAP over IoU 0.50:0.05:0.95, AP50, AP75.

    Sample i is an image holding one ground-truth target `gt_rles[i]` and one detection
    `pred_rles[i]` with confidence `scores[i]`, or several (lists of RLEs and scores, e.g.
    every query of a model); all share a single category.
    """
    if not len(gt_rles) == len(pred_rles) == len(scores):
        raise ValueError(
            f"mask_average_precision: {len(gt_rles)} targets, {len(pred_rles)} predictions and "
            f"{len(scores)} scores; one of each per sample is needed"
        )
    if not gt_rles:
        raise ValueError("mask_average_precision needs at least one sample")
    images, annotations, detections = [], [], []
    for i, (gt, pred, score) in enumerate(zip(gt_rles, pred_rles, scores)):
        preds, confidences = ([pred], [score]) if isinstance(pred, dict) else (pred, score)
        if len(preds) != len(confidences):
            raise ValueError(f"sample {i}: {len(preds)} detections but {len(confidences)} scores")
        for p in preds:
            if tuple(gt["size"]) != tuple(p["size"]):
                raise ValueError(f"sample {i}: target size {gt['size']} != prediction {p['size']}")
        height, width = gt["size"]
        images.append({"id": i, "height": int(height), "width": int(width)})
        x, y, w, h = mask_utils.toBbox(gt).tolist()
        annotations.append(
            {
                "id": i + 1,
                "image_id": i,
                "category_id": 1,
                "segmentation": gt,
                "area": float(mask_utils.area(gt)),
                "bbox": [x, y, w, h],
                "iscrowd": 0,
            }
        )
        detections.extend(
            {"image_id": i, "category_id": 1, "segmentation": p, "score": float(c)}
            for p, c in zip(preds, confidences)
        )
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "target"}],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="segm")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    # COCOeval reports -1 where a value is undefined (no ground truth in range).
    stats = [float("nan") if s < 0 else float(s) for s in coco_eval.stats[:3]]
    return {"mAP": stats[0], "AP50": stats[1], "AP75": stats[2]}


def benchmark_jf(num_frames: int = 100, height: int = 720, width: int = 1280) -> float:
    """Seconds per frame to compute J and F on random blob masks of the given size."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    pairs = []
    for _ in range(num_frames):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.1, 0.4) * height, rng.uniform(0.1, 0.4) * width
        gt = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        pred = ((yy - cy - rng.normal(0, 10)) / ry) ** 2 + ((xx - cx) / (rx * 1.1)) ** 2 < 1
        pairs.append((pred, gt))
    start = time.perf_counter()
    for pred, gt in pairs:
        region_similarity(pred, gt)
        contour_accuracy(pred, gt)
    return (time.perf_counter() - start) / num_frames
