"""Reads a video (mp4/avi/... file or a folder of frames) and writes masks and overlay videos."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from rvos_d2.utils.cli import InputFileError
from rvos_d2.utils.image_io import read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
OVERLAY_COLOR = np.array([255, 64, 32], dtype=np.float32)  # RGB

logger = logging.getLogger(__name__)


def read_video_frames(
    path: str | Path, allow_incomplete: bool = False
) -> tuple[list[np.ndarray], list[str]]:
    """Returns the RGB uint8 frames of a video file or frame folder, and a name for each frame.

    Raises FileNotFoundError / ValueError / OSError naming the path when it is missing, empty or
    unreadable, when a frame image is truncated or corrupt, when the frames of a folder differ in
    size, or when a video file decodes to fewer frames than its container declares (a truncated
    file); with `allow_incomplete` that last case only logs a warning and the decoded frames are
    used.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video not found: {path}")
    frames, names = _read_folder(path) if path.is_dir() else _read_file(path, allow_incomplete)
    if not frames:
        raise ValueError(f"no frames could be read from {path}")
    sizes = {f.shape[:2] for f in frames}
    if len(sizes) > 1:
        raise ValueError(f"frames of {path} differ in size: {sorted(sizes)}")
    return frames, names


def _read_folder(folder: Path) -> tuple[list[np.ndarray], list[str]]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    frames = [read_image(file, format="RGB") for file in files]
    return frames, [f.stem for f in files]


def _read_file(file: Path, allow_incomplete: bool) -> tuple[list[np.ndarray], list[str]]:
    capture = cv2.VideoCapture(str(file))
    if not capture.isOpened():
        raise ValueError(f"cannot open video file: {file}")
    frames = []
    try:
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))  # 0 or less: not known
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if frames and len(frames) < declared:
        message = (
            f"{file}: decoded {len(frames)} frames but the container declares {declared}; "
            "the file is truncated or corrupt"
        )
        if not allow_incomplete:
            raise InputFileError(
                f"{message} (tools/demo.py --allow-incomplete-video uses the decoded frames)"
            )
        logger.warning(f"{message}; using the {len(frames)} decoded frames")
    return frames, [f"{i:05d}" for i in range(len(frames))]


def overlay_mask(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends a colour over the masked pixels of an RGB frame and outlines the mask."""
    out = frame.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * OVERLAY_COLOR
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


def write_masks(masks: np.ndarray, names: Sequence[str], folder: str | Path) -> list[Path]:
    """Writes one binary (0/255) PNG per frame; returns the written paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for mask, name in zip(masks, names):
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), mask.astype(np.uint8) * 255)
        paths.append(path)
    return paths


def write_overlay_video(
    frames: Sequence[np.ndarray], masks: np.ndarray, path: str | Path, fps: float = 8.0
) -> Path:
    """Writes an mp4 of the frames with their masks overlaid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"cannot write video {path}")
    try:
        for frame, mask in zip(frames, masks):
            writer.write(cv2.cvtColor(overlay_mask(frame, mask), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path
