"""Merging the masks of the objects of one video into one label map, as Ref-DAVIS17 results are
scored: with the DAVIS protocol each pixel belongs to at most one object.

Per pixel the object with the highest probability wins if that probability is at least
`threshold`; otherwise (or where no object reaches it) the pixel is background. Ties go to the
object listed first. This is the published ReferFormer's Ref-DAVIS inference (probabilities
below 0.5 zeroed, a constant background score of 0.1, argmax over [background, objects...]).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["merge_object_probabilities"]

BACKGROUND_SCORE = 0.1


def merge_object_probabilities(probs: Sequence[np.ndarray], threshold: float = 0.5) -> np.ndarray:
    """Label map (0 = background, k + 1 = object k) of objects' probability maps, all of one
    shape (e.g. T x H x W), listed in object order."""
    if not probs:
        raise ValueError("merge_object_probabilities: no object to merge")
    shapes = {p.shape for p in probs}
    if len(shapes) != 1:
        raise ValueError(f"merge_object_probabilities: the objects' maps differ in shape: {shapes}")
    stacked = np.stack([np.asarray(p, np.float32) for p in probs])
    stacked[stacked < threshold] = 0.0
    background = np.full((1, *stacked.shape[1:]), BACKGROUND_SCORE, np.float32)
    return np.argmax(np.concatenate([background, stacked]), axis=0).astype(np.int64)
