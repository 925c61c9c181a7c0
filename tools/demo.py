#!/usr/bin/env python
"""Segments the object a sentence refers to in every frame of a video.

    python tools/demo.py --config-file configs/Synthetic/ReferFormer-tiny.yaml \
        --video clip.mp4 --text "the red circle moving left" --output out/ \
        [--opts MODEL.WEIGHTS path/to/model.pth MODEL.DEVICE cpu]

Writes `out/masks/<frame>.png` (0/255) and `out/overlay.mp4` (the sentence as a caption), frame
by frame: the video is decoded lazily and flows through the model in windows of TEST.WINDOW
frames, so a video of any length is segmented in bounded memory. Until the last frame is done
they are written into `out/incomplete/`: a run that fails (e.g. on a truncated video) leaves
its partial output there, never where a complete result goes.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import tqdm

import rvos_d2  # noqa: F401  (shims, registrations)
from rvos_d2.engine.predictor import VideoPredictor
from rvos_d2.utils.cli import load_config, run_cli
from rvos_d2.utils.video_io import OverlayVideoWriter, VideoReader, write_masks

from detectron2.config import CfgNode
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


def publish(staging: Path, output: Path) -> tuple[Path, Path]:
    """Moves a finished run's masks and overlay from `staging` into `output` (replacing an
    earlier run's), so that an interrupted run never leaves output that looks complete."""
    masks, video = output / "masks", output / "overlay.mp4"
    shutil.rmtree(masks, ignore_errors=True)
    (staging / "masks").rename(masks)
    (staging / "overlay.mp4").replace(video)
    staging.rmdir()
    return masks, video


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="rvos_d2")
    if not args.text.strip():
        logger.error("--text is empty: give the sentence that refers to the object")
        return 2
    reader = VideoReader(args.video, args.allow_incomplete_video)
    first = next(iter(reader))[1]
    cfg = setup_cfg(args)
    segmenter = VideoPredictor(cfg)
    start = time.perf_counter()
    logger.info("segmenting %s (%d frames): %r", args.video, len(reader), args.text)
    output = Path(args.output)
    staging = output / "incomplete"  # renamed into place once every frame is segmented
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "masks").mkdir(parents=True)
    outputs = segmenter.stream((frame for _, frame in reader), args.text, first.shape[:2])
    scores = []
    # the model reads the video once; frames are read again to draw the overlay
    with OverlayVideoWriter(staging / "overlay.mp4", args.fps, caption=args.text) as overlay:
        progress = tqdm.tqdm(zip(reader, outputs), total=len(reader) or None, file=sys.stderr)
        for (name, frame), (prob, score) in progress:
            mask = prob >= args.threshold
            write_masks([mask], [name], staging / "masks")
            overlay.write(frame, mask)
            scores.append(score)
    masks, video = publish(staging, output)
    logger.info(
        "done in %.1fs: %d masks in %s, overlay %s, mean score %.3f",
        time.perf_counter() - start,
        len(scores),
        masks,
        video,
        float(np.mean(scores)),
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
