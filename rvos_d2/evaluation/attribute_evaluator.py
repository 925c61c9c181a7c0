"""Foreground pixel accuracy of dense attribute predictions (DenseAttributeClassifier).

For each attribute: the fraction of labelled object pixels (label > 0) of every frame of the
dataset whose most probable class is their label; NaN for an attribute without such pixels.
Results under "attributes": one entry per attribute and "mean", their mean over the attributes
with object pixels.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, OrderedDict
from typing import Any

from rvos_d2.evaluation.build import EVALUATOR_REGISTRY
from rvos_d2.evaluation.predictions import gather_records

from detectron2.evaluation import DatasetEvaluator

logger = logging.getLogger(__name__)


@EVALUATOR_REGISTRY.register_as("attributes")
class AttributeAccuracyEvaluator(DatasetEvaluator):
    """Pools correct and labelled object pixels per attribute over the dataset; writes no file
    (`output_dir` is accepted as EVALUATOR_REGISTRY passes it to every evaluator)."""

    def __init__(self, dataset_name: str, output_dir: str | None = None, distributed: bool = True):
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._counts: list[dict[str, Any]] = []

    def reset(self) -> None:
        self._counts = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        for model_input, output in zip(inputs, outputs):
            video = f"video {model_input.get('video_id')!r} of {self._dataset_name}"
            labels = model_input["attribute_labels"]
            for name, scores in output["attribute_scores"].items():
                if name not in labels:
                    raise KeyError(f"{video}: no attribute_labels for the predicted {name!r}")
                predicted = scores.argmax(1).cpu()
                target = labels[name]
                if predicted.shape != target.shape:
                    raise ValueError(
                        f"{video}: {name} predictions are {tuple(predicted.shape)}, its labels "
                        f"{tuple(target.shape)}"
                    )
                foreground = target > 0
                self._counts.append(
                    {
                        "attribute": name,
                        "correct": int((predicted == target)[foreground].sum()),
                        "total": int(foreground.sum()),
                    }
                )

    def evaluate(self) -> OrderedDict[str, dict[str, float]] | dict:
        counts = gather_records(self._counts, self._distributed)
        if counts is None:  # not the main process
            return {}
        if not counts:
            logger.warning(
                "AttributeAccuracyEvaluator on %s received no predictions", self._dataset_name
            )
            return {}
        correct, total = Counter(), Counter()
        for c in counts:
            correct[c["attribute"]] += c["correct"]
            total[c["attribute"]] += c["total"]
        accuracy = {
            name: correct[name] / total[name] if total[name] else math.nan
            for name in dict.fromkeys(c["attribute"] for c in counts)
        }
        measured = [v for v in accuracy.values() if not math.isnan(v)]
        accuracy["mean"] = sum(measured) / len(measured) if measured else math.nan
        return OrderedDict(attributes=accuracy)
