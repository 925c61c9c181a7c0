"""Picks the evaluator of a registered dataset from its metadata's `evaluator_type`."""

from __future__ import annotations

import os

from rvos_d2.utils.registry import NamedRegistry

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator

EVALUATOR_REGISTRY = NamedRegistry("RVOS_EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = """Dataset evaluators keyed by a dataset's metadata `evaluator_type`;
each is called as Evaluator(dataset_name, output_folder)."""


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: str | None = None
) -> DatasetEvaluator:
    """The evaluator for `dataset_name`; outputs go to `output_folder`, by default
    `<cfg.OUTPUT_DIR>/inference/<dataset_name>`."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if evaluator_type not in EVALUATOR_REGISTRY:
        raise ValueError(
            f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r} in its metadata; "
            f"rvos_d2 evaluates {EVALUATOR_REGISTRY.names()}"
        )
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    return EVALUATOR_REGISTRY.get(evaluator_type)(dataset_name, output_folder)
