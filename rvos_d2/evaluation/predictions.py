"""What every rvos_d2 evaluator shares: the dataset index, checked per-frame predictions, gathering.

Model outputs follow the inference contract: `pred_masks` is a T x H x W tensor of probabilities
at the original frame size for the frames listed in the input's `frame_ids`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from detectron2.data import DatasetCatalog
from detectron2.utils import comm

MASK_THRESHOLD = 0.5  # a pixel belongs to the prediction when its probability is above this


def index_dataset(dataset_name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Maps (video_id, exp_id) to the registered dataset dict of `dataset_name`."""
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for record in DatasetCatalog.get(dataset_name):
        key = (record["video_id"], record["exp_id"])
        if key in index:
            raise ValueError(
                f"dataset {dataset_name!r} has two dicts for video {key[0]!r} expression "
                f"{key[1]!r}; evaluation needs (video_id, exp_id) to be unique"
            )
        index[key] = record
    return index


def find_dataset_dict(
    index: dict[tuple[str, str], dict[str, Any]], dataset_name: str, model_input: dict[str, Any]
) -> dict[str, Any]:
    """The dataset dict that `model_input` was built from, checking it belongs to the dataset."""
    input_dataset = model_input.get("dataset_name", dataset_name)
    if input_dataset != dataset_name:
        raise ValueError(
            f"an input from dataset {input_dataset!r} was given to the evaluator of "
            f"{dataset_name!r}"
        )
    key = (model_input["video_id"], model_input["exp_id"])
    if key not in index:
        raise KeyError(f"video {key[0]!r} expression {key[1]!r} is not in dataset {dataset_name!r}")
    return index[key]


def predicted_frames(
    model_input: dict[str, Any],
    output: dict[str, Any],
    dataset_dict: dict[str, Any],
    frames: Sequence[int],
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yields (frame index, row in the output, H x W bool prediction) for each of `frames`.

    Raises when the output lacks one of `frames` or its masks are not at the original size.
    """
    video, exp = dataset_dict["video_id"], dataset_dict["exp_id"]
    frame_ids = [int(f) for f in model_input["frame_ids"]]
    masks = output.get("pred_masks")
    if masks is None:
        raise KeyError(f"video {video!r} expression {exp!r}: the model output has no pred_masks")
    size = (dataset_dict["height"], dataset_dict["width"])
    if masks.ndim != 3 or len(masks) != len(frame_ids) or tuple(masks.shape[1:]) != size:
        raise ValueError(
            f"video {video!r} expression {exp!r}: pred_masks has shape {tuple(masks.shape)}, "
            f"expected {len(frame_ids)} frames (one per frame_ids entry) at the original size "
            f"{size}"
        )
    row_of = {frame: row for row, frame in enumerate(frame_ids)}
    missing = [f for f in frames if f not in row_of]
    if missing:
        raise ValueError(
            f"video {video!r} expression {exp!r}: no prediction for frames {missing} "
            f"(predicted: {frame_ids}); evaluation needs every scored frame, check "
            f"INPUT.TEST_FRAME_STRIDE"
        )
    for frame in frames:
        row = row_of[frame]
        yield frame, row, _binarize(masks[row])


def _binarize(probabilities: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(probabilities, torch.Tensor):
        return (probabilities > MASK_THRESHOLD).cpu().numpy()
    return np.asarray(probabilities) > MASK_THRESHOLD


def gather_records(records: list[Any], distributed: bool) -> list[Any] | None:
    """All processes' records on the main process (None elsewhere); the local ones otherwise."""
    if not distributed or comm.get_world_size() == 1:
        return list(records)
    comm.synchronize()
    gathered = comm.gather(records, dst=0)
    if not comm.is_main_process():
        return None
    return list(itertools.chain.from_iterable(gathered))
