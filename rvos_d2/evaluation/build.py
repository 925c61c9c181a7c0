"""Picks the evaluator of a registered dataset from its metadata's `evaluator_type`."""

from __future__ import annotations

import os

from rvos_d2.evaluation.a2d_evaluator import A2DEvaluator
from rvos_d2.evaluation.rvos_evaluator import RVOSEvaluator
from rvos_d2.evaluation.submission import RVOSSubmissionWriter

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator

EVALUATORS = {
    "rvos": RVOSEvaluator,
    "rvos_submission": RVOSSubmissionWriter,
    "a2d": A2DEvaluator,
}


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: str | None = None
) -> DatasetEvaluator:
    """The evaluator for `dataset_name`; outputs go to `output_folder`, by default
    `<cfg.OUTPUT_DIR>/inference/<dataset_name>`."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if evaluator_type not in EVALUATORS:
        raise ValueError(
            f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r} in its metadata; "
            f"rvos_d2 evaluates {sorted(EVALUATORS)}"
        )
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    return EVALUATORS[evaluator_type](dataset_name, output_folder)
