#!/usr/bin/env python
"""Segments the object a sentence refers to in every frame of a video.

    python tools/demo.py --config-file configs/Synthetic/ReferFormer-tiny.yaml \
        --video clip.mp4 --text "the red circle moving left" --output out/ \
        [--opts MODEL.WEIGHTS path/to/model.pth MODEL.DEVICE cpu]

Writes `out/masks/<frame>.png` (0/255) and `out/overlay.mp4`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import tqdm

import rvos_d2  # noqa: F401  (shims, registrations)
from rvos_d2.data.model_input import build_model_input
from rvos_d2.data.transforms import augment_clip, build_clip_augmentations
from rvos_d2.engine import RVOSCheckpointer
from rvos_d2.utils.cli import load_config, run_cli
from rvos_d2.utils.video_io import read_video_frames, write_masks, write_overlay_video

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
    """Builds a model from a config, loads its weights, and segments frames from a sentence."""

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

    @torch.no_grad()
    def __call__(self, frames: list[np.ndarray], text: str) -> tuple[np.ndarray, np.ndarray]:
        """Returns per-frame mask probabilities (T x H x W) and scores (T) for RGB frames."""
        if not text.strip():
            raise ValueError("the referring expression (--text) is empty")
        inputs = frames if self.image_format == "RGB" else [f[..., ::-1] for f in frames]
        resized, _, _ = augment_clip(self.augmentations, list(inputs), [None] * len(frames))
        height, width = frames[0].shape[:2]
        model_input = build_model_input(
            resized, text, height=height, width=width, video_id="demo", exp_id="0"
        )
        output = self.model([model_input])[0]
        return output["pred_masks"].float().cpu().numpy(), output["scores"].float().cpu().numpy()


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="rvos_d2")
    if not args.text.strip():
        logger.error("--text is empty: give the sentence that refers to the object")
        return 2
    try:
        frames, names = read_video_frames(args.video, args.allow_incomplete_video)
    except (FileNotFoundError, ValueError) as err:
        logger.error("%s", err)
        return 2
    cfg = setup_cfg(args)
    segmenter = VideoSegmenter(cfg)
    start = time.perf_counter()
    logger.info("segmenting %d frames of %s: %r", len(frames), args.video, args.text)
    probs, scores = segmenter(frames, args.text)
    masks = probs >= args.threshold
    output = Path(args.output)
    write_masks(tqdm.tqdm(masks, desc="masks", file=sys.stderr), names, output / "masks")
    video = write_overlay_video(frames, masks, output / "overlay.mp4", fps=args.fps)
    logger.info(
        "done in %.1fs: %d masks in %s, overlay %s, mean score %.3f",
        time.perf_counter() - start,
        len(masks),
        output / "masks",
        video,
        float(scores.mean()),
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
