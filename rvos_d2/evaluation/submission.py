"""Challenge submissions for splits without public masks (Ref-YouTube-VOS valid, MeViS valid).

Every frame of every (video, expression) is written as a binary PNG (0 background, 255 target)
at the original size to `<output_dir>/Annotations/<video>/<exp_id>/<frame_name>.png`, and the
main process packs them into `<output_dir>/submission.zip` with that same internal layout.
"""

from __future__ import annotations

import logging
import os
import zipfile
from typing import Any

import cv2
import numpy as np

from rvos_d2.evaluation.build import EVALUATOR_REGISTRY
from rvos_d2.evaluation.predictions import (
    find_dataset_dict,
    gather_records,
    index_dataset,
    predicted_frames,
)

from detectron2.evaluation import DatasetEvaluator

logger = logging.getLogger(__name__)

ANNOTATIONS_DIR = "Annotations"
ZIP_NAME = "submission.zip"


def write_binary_png(path: str, mask: np.ndarray) -> None:
    """Writes an H x W bool mask as a single-channel 0/255 PNG."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, np.asarray(mask, dtype=np.uint8) * 255):
        raise OSError(f"could not write mask image {path}")


def write_submission_zip(output_dir: str, relative_paths: list[str]) -> str:
    """Packs the given files of `output_dir` (paths relative to it) into its submission zip."""
    missing = [p for p in relative_paths if not os.path.isfile(os.path.join(output_dir, p))]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} predicted masks are not under {output_dir} (first: {missing[0]}); "
            f"every process must write to the same shared output directory"
        )
    zip_path = os.path.join(output_dir, ZIP_NAME)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for rel in sorted(set(relative_paths)):
            archive.write(os.path.join(output_dir, rel), arcname=rel.replace(os.sep, "/"))
    return zip_path


def require_output_dir(dataset_name: str, output_dir: str | None) -> str:
    """The directory a submission of `dataset_name` (a split without masks) is written to."""
    if not output_dir:
        raise ValueError(
            f"dataset {dataset_name!r} has no masks: an output directory is needed to write "
            f"its submission"
        )
    return output_dir


def finish_submission(
    written: list[str], dataset_name: str, output_dir: str, distributed: bool, what: str
) -> None:
    """Gathers the files every process wrote (`what` they hold, for the log) and, in the main
    process, packs them into the submission zip."""
    written = gather_records(written, distributed)
    if written is None:
        return
    if not written:
        logger.warning("no predictions for %s: no submission written", dataset_name)
        return
    zip_path = write_submission_zip(output_dir, written)
    logger.info(
        "%s has no public masks: %d %s written to %s for the challenge server; no metrics computed",
        dataset_name,
        len(written),
        what,
        zip_path,
    )


@EVALUATOR_REGISTRY.register_as("rvos_submission")
class RVOSSubmissionWriter(DatasetEvaluator):
    """Writes the masks of a split without ground truth for a challenge server; no metrics."""

    def __init__(self, dataset_name: str, output_dir: str | None, distributed: bool = True):
        self._dataset_name = dataset_name
        self._output_dir = require_output_dir(dataset_name, output_dir)
        self._distributed = distributed
        self._index = index_dataset(dataset_name)
        self._written: list[str] = []

    def reset(self) -> None:
        self._written = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        for model_input, output in zip(inputs, outputs):
            d = find_dataset_dict(self._index, self._dataset_name, model_input)
            folder = os.path.join(ANNOTATIONS_DIR, d["video_id"], d["exp_id"])
            for frame, _, pred in predicted_frames(model_input, output, d, range(d["length"])):
                rel = os.path.join(folder, f"{d['frame_names'][frame]}.png")
                write_binary_png(os.path.join(self._output_dir, rel), pred)
                self._written.append(rel)

    def evaluate(self) -> dict:
        finish_submission(
            self._written,
            self._dataset_name,
            self._output_dir,
            self._distributed,
            "predicted masks",
        )
        return {}
