"""VideoPredictor: a model built from a config that segments a video from a sentence."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from rvos_d2.data.model_input import build_model_input
from rvos_d2.data.transforms import augment_clip, build_clip_augmentations
from rvos_d2.engine.checkpoint import RVOSCheckpointer

from detectron2.config import CfgNode
from detectron2.modeling import build_model

__all__ = ["VideoPredictor"]

logger = logging.getLogger(__name__)


class VideoPredictor:
    """Builds a model from a config, loads its weights, and segments a video from a sentence,
    frame by frame in windows of TEST.WINDOW frames (memory bounded by a window for models
    with `stream_video`; others, and TEST.PROPAGATION post-processing, which needs the best-scored
    frame before anything is propagated, get the whole video at once)."""

    def __init__(self, cfg: CfgNode):
        self.model = build_model(cfg).eval()
        if cfg.MODEL.WEIGHTS:
            checkpointer = RVOSCheckpointer(
                self.model, allow_partial=cfg.MODEL.WEIGHTS_ALLOW_PARTIAL
            )
            checkpointer.load(cfg.MODEL.WEIGHTS)
        else:
            logger.warning("MODEL.WEIGHTS is empty: the model is randomly initialised")
        self.augmentations = build_clip_augmentations(cfg, is_train=False)
        self.image_format = cfg.INPUT.FORMAT
        self.window = cfg.TEST.WINDOW

    def _model_input(self, frames: list[np.ndarray], text: str) -> dict:
        """The model input of RGB frames: resized, in the model's channel order."""
        inputs = frames if self.image_format == "RGB" else [f[..., ::-1] for f in frames]
        resized, _, _ = augment_clip(self.augmentations, list(inputs), [None] * len(frames))
        height, width = frames[0].shape[:2]
        return build_model_input(
            resized, text, height=height, width=width, video_id="demo", exp_id="0"
        )

    def _windows(self, frames: Iterable[np.ndarray], text: str) -> Iterator[torch.Tensor]:
        batch = []
        for frame in frames:
            batch.append(frame)
            if len(batch) == self.window:
                yield self._model_input(batch, text)["image"]
                batch = []
        if batch:
            yield self._model_input(batch, text)["image"]

    @torch.no_grad()
    def stream(
        self, frames: Iterable[np.ndarray], text: str, size: tuple[int, int]
    ) -> Iterator[tuple[np.ndarray, float]]:
        """(H x W mask probabilities, score) per frame of RGB frames of size `size`, in order."""
        if not text.strip():
            raise ValueError("the referring expression is empty")
        if hasattr(self.model, "stream_video") and getattr(self.model, "propagation", None) is None:
            for out in self.model.stream_video(self._windows(frames, text), text, size):
                yield out["pred_masks"].float().cpu().numpy(), float(out["scores"])
            return
        output = self.model([self._model_input(list(frames), text)])[0]
        for prob, score in zip(output["pred_masks"], output["scores"]):
            yield prob.float().cpu().numpy(), float(score)

    def __call__(self, frames: list[np.ndarray], text: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame mask probabilities (T x H x W) and scores (T) of RGB frames in memory."""
        probs, scores = zip(*self.stream(frames, text, frames[0].shape[:2]))
        return np.stack(probs), np.array(scores)
