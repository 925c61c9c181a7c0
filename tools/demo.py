#!/usr/bin/env python
"""Segments the object a sentence refers to in every frame of a video.

    python tools/demo.py --config-file configs/Synthetic/ReferFormer-tiny.yaml \
        --video clip.mp4 --text "the red circle moving left" --output out/ \
        [--opts MODEL.WEIGHTS path/to/model.pth MODEL.DEVICE cpu]

Writes `out/masks/<frame>.png` (0/255) and `out/overlay.mp4` (the sentence as a caption), frame
by frame: the video is decoded lazily and flows through the model in windows of TEST.WINDOW
frames, so a video of any length is segmented in bounded memory.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import tqdm

import rvos_d2  # noqa: F401  (shims, registrations)
from rvos_d2.data.model_input import build_model_input
from rvos_d2.data.transforms import augment_clip, build_clip_augmentations
from rvos_d2.engine import RVOSCheckpointer
from rvos_d2.utils.cli import load_config, run_cli
from rvos_d2.utils.video_io import OverlayVideoWriter, VideoReader, write_masks

from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

logger = logging.getLogger("rvos_d2.demo")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, help="path to a config yaml")
    parser.add_argument("--video", required=True, help="a video file or a folder of frames")
    parser.add_argument("--text", required=True, help="the referring expression")
    parser.add_argument("--output", required=True, help="folder for masks and the overlay video")
    parser.add_argument("--threshold", type=float, default=0.5, help="mask probability threshold")
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate of the overlay video")
    parser.add_argument(
        "--allow-incomplete-video",
        action="store_true",
        help="segment the frames a truncated video file yields (warning) instead of failing",
    )
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides")
    return parser


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    cfg = load_config(args.config_file, args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


class VideoSegmenter:
    """Builds a model from a config, loads its weights, and segments a video from a sentence,
    frame by frame in windows of TEST.WINDOW frames (memory bounded by a window for models
    with `stream_video`; others get the whole video at once)."""

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
            raise ValueError("the referring expression (--text) is empty")
        if hasattr(self.model, "stream_video"):
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


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="rvos_d2")
    if not args.text.strip():
        logger.error("--text is empty: give the sentence that refers to the object")
        return 2
    reader = VideoReader(args.video, args.allow_incomplete_video)
    first = next(iter(reader))[1]
    cfg = setup_cfg(args)
    segmenter = VideoSegmenter(cfg)
    start = time.perf_counter()
    logger.info("segmenting %s (%d frames): %r", args.video, len(reader), args.text)
    output = Path(args.output)
    (output / "masks").mkdir(parents=True, exist_ok=True)
    outputs = segmenter.stream((frame for _, frame in reader), args.text, first.shape[:2])
    scores = []
    # the model reads the video once; frames are read again to draw the overlay
    with OverlayVideoWriter(output / "overlay.mp4", args.fps, caption=args.text) as overlay:
        progress = tqdm.tqdm(zip(reader, outputs), total=len(reader) or None, file=sys.stderr)
        for (name, frame), (prob, score) in progress:
            mask = prob >= args.threshold
            write_masks([mask], [name], output / "masks")
            overlay.write(frame, mask)
            scores.append(score)
    logger.info(
        "done in %.1fs: %d masks in %s, overlay %s, mean score %.3f",
        time.perf_counter() - start,
        len(scores),
        output / "masks",
        overlay.path,
        float(np.mean(scores)),
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
