"""J&F evaluation of referring video object segmentation over (video, expression) pairs.

Each pair is scored on its annotated frames only; J and F of a pair are means over those frames,
and dataset J, F, J&F are means over pairs (the DAVIS / Ref-YouTube-VOS / MeViS protocol). When
the dataset metadata names dataset-dict keys in `eval_group_by` (Ref-DAVIS: annotator and
expression type), every metric is computed per group of pairs sharing those keys' values and the
reported value is the mean over groups. When the metadata names keys in `merge_objects_by`
(Ref-DAVIS), the predictions of a video's expressions that share those keys' values (one
annotator's description of every object) are merged into one label map before scoring
(`merge_object_probabilities`), as the DAVIS protocol and the published Ref-DAVIS inference do.
When every output carries "candidate_target_iou" (the best IoU any of a method's candidates
reaches with the target, e.g. TopDownRVOS' kept tracklets), candidate_recall@0.5 (the share of
pairs whose target is among the candidates) and candidate_IoU (its mean) give the ceiling a
perfect selection would reach. All metrics are fractions in [0, 1]. Temporal stability
(SOC, Luo et al. 2023, Fig. 4; lower is steadier): IoU_variance and JF_variance are the variances
over a pair's scored frames of its per-frame IoU and per-frame (J + F) / 2, averaged over pairs.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import OrderedDict, defaultdict
from typing import Any

import numpy as np

from rvos_d2.data.mask_io import load_target_mask
from rvos_d2.evaluation import metrics
from rvos_d2.evaluation.build import EVALUATOR_REGISTRY
from rvos_d2.evaluation.object_merge import merge_object_probabilities
from rvos_d2.evaluation.predictions import (
    find_dataset_dict,
    gather_records,
    index_dataset,
    predicted_frames,
)

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator

logger = logging.getLogger(__name__)


def score_pair(
    model_input: dict[str, Any],
    output: dict[str, Any],
    dataset_dict: dict[str, Any],
    group_by: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Per-frame J, F, intersection and union of one (video, expression) on its annotated frames.

    The record's "group" holds the dataset dict's values of the `group_by` keys.
    """
    missing = [k for k in group_by if k not in dataset_dict]
    if missing:
        raise KeyError(
            f"video {dataset_dict['video_id']!r} expression {dataset_dict['exp_id']!r}: the "
            f"dataset dict lacks {missing}, named in the metadata's eval_group_by"
        )
    annotated = [i for i, ann in enumerate(dataset_dict["mask_annotations"]) if ann is not None]
    record: dict[str, Any] = {
        "video_id": dataset_dict["video_id"],
        "exp_id": dataset_dict["exp_id"],
        "group": tuple(dataset_dict[k] for k in group_by),
        "J": [],
        "F": [],
        "I": [],
        "U": [],
    }
    if "candidate_target_iou" in output:
        record["candidate_iou"] = float(output["candidate_target_iou"])
    for frame, _, pred in predicted_frames(model_input, output, dataset_dict, annotated):
        gt = load_target_mask(dataset_dict, frame)
        inter, union = metrics.intersection_union(pred, gt)
        record["J"].append(metrics.iou_from_counts(inter, union))
        record["F"].append(metrics.contour_accuracy(pred, gt))
        record["I"].append(inter)
        record["U"].append(union)
    return record


def _summarize_group(records: list[dict[str, Any]]) -> dict[str, float]:
    j = float(np.mean([np.mean(r["J"]) for r in records]))
    f = float(np.mean([np.mean(r["F"]) for r in records]))
    frame_ious = [v for r in records for v in r["J"]]
    summary = {"J": j, "F": f, "JF": (j + f) / 2}
    summary.update(metrics.precision_at(frame_ious))
    summary["overall_IoU"] = metrics.overall_iou(
        [v for r in records for v in r["I"]], [v for r in records for v in r["U"]]
    )
    summary["mean_IoU"] = float(np.mean(frame_ious))
    summary["IoU_variance"] = float(np.mean([np.var(r["J"]) for r in records]))
    frame_jf = [(np.asarray(r["J"]) + np.asarray(r["F"])) / 2 for r in records]
    summary["JF_variance"] = float(np.mean([np.var(jf) for jf in frame_jf]))
    if all("candidate_iou" in r for r in records):
        candidate = np.array([r["candidate_iou"] for r in records])
        summary["candidate_recall@0.5"] = float(np.mean(candidate >= 0.5))
        summary["candidate_IoU"] = float(candidate.mean())
    return summary


def summarize_groups(records: list[dict[str, Any]]) -> dict[tuple, dict[str, float]]:
    """Metrics of each group of per-pair records (one group when nothing is grouped).

    J, F, JF average pairs; prec@t, overall_IoU and mean_IoU treat each scored frame as one
    sample (per-frame IoU = J). Pairs without annotated frames are left out.
    """
    scored = [r for r in records if r["J"]]
    if len(scored) < len(records):
        logger.warning(
            "%d (video, expression) pairs have no annotated frame and are not scored",
            len(records) - len(scored),
        )
    if not scored:
        raise ValueError("no annotated frame was scored; cannot compute J&F")
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in scored:
        groups[r["group"]].append(r)
    return {key: _summarize_group(groups[key]) for key in sorted(groups, key=str)}


def mean_over_groups(per_group: dict[tuple, dict[str, float]]) -> OrderedDict[str, float]:
    """Each metric (that every group has) averaged over the groups of `summarize_groups`."""
    values = list(per_group.values())
    keys = [k for k in values[0] if all(k in g for g in values)]
    return OrderedDict((k, float(np.mean([g[k] for g in values]))) for k in keys)


def summarize(records: list[dict[str, Any]]) -> OrderedDict[str, float]:
    """Dataset metrics from per-pair records (see the module docstring for the protocol)."""
    return mean_over_groups(summarize_groups(records))


def write_per_video_csv(
    records: list[dict[str, Any]], path: str, group_by: tuple[str, ...] = ()
) -> None:
    """One row per scored (video, expression): video_id, exp_id, the group_by keys, J, F, JF and
    the number of scored frames."""
    header = ["video_id", "exp_id", *group_by, "J", "F", "JF", "frames"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in sorted(records, key=lambda r: (r["video_id"], r["exp_id"])):
            if not r["J"]:
                continue
            j, fm = float(np.mean(r["J"])), float(np.mean(r["F"]))
            row = [r["video_id"], r["exp_id"], *r["group"]]
            writer.writerow(row + [f"{j:.6f}", f"{fm:.6f}", f"{(j + fm) / 2:.6f}", len(r["J"])])


@EVALUATOR_REGISTRY.register_as("rvos")
class RVOSEvaluator(DatasetEvaluator):
    """J&F, prec@t and IoU of a dataset with masks; results under the "rvos" key.

    Only per-frame scores are kept between `process` and `evaluate`; with `merge_objects_by`,
    also the probabilities of the video being processed.
    """

    def __init__(self, dataset_name: str, output_dir: str | None = None, distributed: bool = True):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        metadata = MetadataCatalog.get(dataset_name)
        self._group_by = tuple(metadata.get("eval_group_by", ()))
        self._merge_by = tuple(metadata.get("merge_objects_by", ()))
        self._index = index_dataset(dataset_name)
        self._records: list[dict[str, Any]] = []
        self._pending: list[tuple[dict, dict, dict]] = []  # one video's pairs awaiting a merge

    def reset(self) -> None:
        self._records = []
        self._pending = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        for model_input, output in zip(inputs, outputs):
            dataset_dict = find_dataset_dict(self._index, self._dataset_name, model_input)
            if not dataset_dict["has_masks"]:
                raise ValueError(
                    f"dataset {self._dataset_name!r} video {dataset_dict['video_id']!r} has no "
                    f"masks to score; its evaluator_type should be 'rvos_submission'"
                )
            if not self._merge_by:
                self._records.append(score_pair(model_input, output, dataset_dict, self._group_by))
                continue
            if self._pending and self._pending[0][2]["video_id"] != dataset_dict["video_id"]:
                self._score_merged()
            probs = np.asarray(output["pred_masks"], np.float32)
            self._pending.append((model_input, {"pred_masks": probs}, dataset_dict))

    def _score_merged(self) -> None:
        """Scores the pending pairs of one video, each group's objects merged into one map."""
        groups: dict[tuple, list[tuple[dict, dict, dict]]] = defaultdict(list)
        for pair in self._pending:
            groups[tuple(pair[2][k] for k in self._merge_by)].append(pair)
        for pairs in groups.values():
            pairs.sort(key=lambda pair: int(pair[2]["obj_ids"][0]))
            frames = [tuple(int(f) for f in pair[0]["frame_ids"]) for pair in pairs]
            if len(set(frames)) != 1:
                raise ValueError(
                    f"video {pairs[0][2]['video_id']!r}: the expressions merged into one map "
                    "were predicted on different frames"
                )
            labels = merge_object_probabilities([pair[1]["pred_masks"] for pair in pairs])
            for k, (model_input, _, dataset_dict) in enumerate(pairs):
                merged = {"pred_masks": (labels == k + 1).astype(np.float32)}
                self._records.append(score_pair(model_input, merged, dataset_dict, self._group_by))
        self._pending = []

    def evaluate(self) -> OrderedDict[str, dict[str, float]] | dict:
        if self._pending:
            self._score_merged()
        records = gather_records(self._records, self._distributed)
        if records is None:
            return {}
        if not records:
            logger.warning("RVOSEvaluator on %s received no predictions", self._dataset_name)
            return {}
        keys = [(r["video_id"], r["exp_id"]) for r in records]
        if len(set(keys)) != len(keys):
            raise ValueError(
                f"some (video, expression) pairs of {self._dataset_name!r} were processed more "
                f"than once; call reset() before a new evaluation round"
            )
        if len(keys) < len(self._index):
            logger.warning(
                "%s: only %d of its %d (video, expression) pairs were evaluated",
                self._dataset_name,
                len(keys),
                len(self._index),
            )
        per_group = summarize_groups(records)
        if self._group_by:
            for group, values in per_group.items():
                named = ", ".join(f"{k}={v}" for k, v in zip(self._group_by, group))
                logger.info("%s [%s]: J&F %.4f", self._dataset_name, named, values["JF"])
        summary = mean_over_groups(per_group)
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, f"{self._dataset_name}_per_video.csv")
            write_per_video_csv(records, path, self._group_by)
            logger.info("per-video J&F of %s written to %s", self._dataset_name, path)
        return OrderedDict(rvos=dict(summary))
