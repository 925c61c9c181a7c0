#!/usr/bin/env python
"""J&F of the copy baseline on a semi-supervised VOS split: every object keeps its reference mask.

    python tools/vos_copy_baseline.py rvos_synth_vos_valid

Each object's mask of its reference frame is predicted, unchanged, for every later frame and
scored by VOSEvaluator (DAVIS protocol), so a propagation network can be compared with what no
tracking at all achieves. Prints the summary as one JSON object; --output also writes the
per-object CSV there.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

import rvos_d2  # noqa: F401  (shims, dataset registrations)
from rvos_d2.data.datasets.vos import load_id_map
from rvos_d2.evaluation.vos_evaluator import VOSEvaluator
from rvos_d2.utils.cli import InputError, check_dataset_name, run_cli

from detectron2.data import DatasetCatalog, MetadataCatalog


def copy_prediction(dataset_dict: dict[str, Any]) -> dict[str, Any]:
    """Model output (VOSEvaluator format) that repeats each object's reference-frame mask."""
    obj_ids = list(dataset_dict["obj_ids"])
    if not obj_ids:
        raise InputError(f"video {dataset_dict['video_id']!r}: no object to copy")
    masks = []
    for obj_id, start in zip(obj_ids, dataset_dict["first_frames"]):
        id_map = load_id_map(dataset_dict, start)
        if id_map is None:
            raise InputError(
                f"video {dataset_dict['video_id']!r}: object {obj_id} has no annotation in its "
                f"reference frame {start}"
            )
        masks.append(torch.from_numpy(np.asarray(id_map == obj_id, np.float32)))
    probs = torch.zeros(dataset_dict["length"], len(obj_ids), *masks[0].shape)
    for k, (mask, start) in enumerate(zip(masks, dataset_dict["first_frames"])):
        probs[start:, k] = mask
    return {"pred_masks": probs, "obj_ids": obj_ids}


def evaluate_copy(dataset_name: str, output_dir: str | None = None) -> dict[str, float]:
    """VOSEvaluator's summary ("vos") of the copy baseline on a registered VOS split."""
    if not MetadataCatalog.get(dataset_name).get("has_masks", True):
        raise InputError(f"dataset {dataset_name!r} has no masks to score the copy baseline on")
    evaluator = VOSEvaluator(dataset_name, output_dir, distributed=False)
    evaluator.reset()
    for d in DatasetCatalog.get(dataset_name):
        output = copy_prediction(d)
        height, width = output["pred_masks"].shape[-2:]
        model_input = {"video_id": d["video_id"], "height": height, "width": width}
        evaluator.process([model_input], [output])
    return dict(evaluator.evaluate()["vos"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="registered VOS split with masks (rvos_synth_vos_valid)")
    parser.add_argument("--output", help="folder for the per-object CSV")
    args = parser.parse_args(argv)
    check_dataset_name(args.dataset)
    summary = evaluate_copy(args.dataset, args.output)
    print(json.dumps({"dataset": args.dataset, **{k: round(v, 4) for k, v in summary.items()}}))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
