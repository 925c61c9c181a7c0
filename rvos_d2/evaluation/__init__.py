"""Metrics and detectron2 evaluators for referring video object segmentation."""

from rvos_d2.evaluation.a2d_evaluator import A2DEvaluator
from rvos_d2.evaluation.attribute_evaluator import AttributeAccuracyEvaluator
from rvos_d2.evaluation.build import EVALUATOR_REGISTRY, build_evaluator
from rvos_d2.evaluation.rvos_evaluator import RVOSEvaluator
from rvos_d2.evaluation.submission import RVOSSubmissionWriter
from rvos_d2.evaluation.vos_evaluator import VOSEvaluator

__all__ = [
    "EVALUATOR_REGISTRY",
    "A2DEvaluator",
    "AttributeAccuracyEvaluator",
    "RVOSEvaluator",
    "RVOSSubmissionWriter",
    "VOSEvaluator",
    "build_evaluator",
]
