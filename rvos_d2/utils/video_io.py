"""Reads a video (mp4/avi/... file or a folder of frames) and writes masks and overlay videos."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from rvos_d2.utils.cli import InputFileError, MissingFileError
from rvos_d2.utils.image_io import read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
OVERLAY_COLOR = np.array([255, 64, 32], dtype=np.float32)  # RGB

logger = logging.getLogger(__name__)


class VideoReader:
    """A video file or frame folder read lazily: each iteration decodes the frames one at a
    time, so a video of any length is read in bounded memory (and can be read again).

    Yields (name, RGB uint8 frame). Raises, naming the path, for a missing, empty or unreadable
    video, a truncated or corrupt frame image, frames of another size than the first, and a
    video file that decodes to fewer frames than its container declares (a truncated file);
    with `allow_incomplete` that last case only logs a warning.
    """

    def __init__(self, path: str | Path, allow_incomplete: bool = False):
        self.path, self.allow_incomplete = Path(path), allow_incomplete
        if not self.path.exists():
            raise MissingFileError(f"video not found: {self.path}")
        if self.path.is_dir():
            self.files = sorted(
                p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not self.files:
                raise InputFileError(f"no frames could be read from {self.path}")
            self.declared = len(self.files)
            self.fps = None
        else:
            self.files = None
            capture = _open_capture(self.path)
            self.declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))  # 0 or less: not known
            self.fps = capture.get(cv2.CAP_PROP_FPS) or None
            capture.release()

    def __len__(self) -> int:
        """Frames listed in the folder or declared by the container (0 when it declares none)."""
        return max(self.declared, 0)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        frames = self._folder_frames() if self.files is not None else self._file_frames()
        size = None
        for name, frame in frames:
            if size is None:
                size = frame.shape[:2]
            elif frame.shape[:2] != size:
                raise InputFileError(
                    f"frames of {self.path} differ in size: {name} is {frame.shape[:2]}, "
                    f"the first frame {size}"
                )
            yield name, frame
        if size is None:
            raise InputFileError(f"no frames could be read from {self.path}")

    def _folder_frames(self) -> Iterator[tuple[str, np.ndarray]]:
        for file in self.files:
            yield file.stem, read_image(file, format="RGB")

    def _file_frames(self) -> Iterator[tuple[str, np.ndarray]]:
        capture = _open_capture(self.path)
        count = 0
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                yield f"{count:05d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                count += 1
        finally:
            capture.release()
        if count and count < self.declared:
            message = (
                f"{self.path}: decoded {count} frames but the container declares "
                f"{self.declared}; the file is truncated or corrupt"
            )
            if not self.allow_incomplete:
                raise InputFileError(
                    f"{message} (tools/demo.py --allow-incomplete-video uses the decoded frames)"
                )
            logger.warning(f"{message}; using the {count} decoded frames")


def _open_capture(path: Path) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InputFileError(f"cannot open video file: {path}")
    return capture


def read_video_frames(
    path: str | Path, allow_incomplete: bool = False
) -> tuple[list[np.ndarray], list[str]]:
    """Every RGB uint8 frame of a video file or frame folder and a name for each, in memory
    (VideoReader reads them lazily; its errors apply)."""
    names, frames = [], []
    for name, frame in VideoReader(path, allow_incomplete):
        names.append(name)
        frames.append(frame)
    return frames, names


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


class OverlayVideoWriter:
    """Writes an mp4 one frame at a time: each RGB frame with its mask overlaid and, if given,
    a caption (the sentence) along the bottom."""

    def __init__(self, path: str | Path, fps: float = 8.0, caption: str | None = None):
        self.path, self.fps, self.caption = Path(path), fps, caption
        self._writer: cv2.VideoWriter | None = None

    def write(self, frame: np.ndarray, mask: np.ndarray) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            height, width = frame.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (width, height))
            if not self._writer.isOpened():
                raise OSError(f"cannot write video {self.path}")
        out = overlay_mask(frame, mask)
        if self.caption:
            _draw_caption(out, self.caption)
        self._writer.write(cv2.cvtColor(out, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()

    def __enter__(self) -> OverlayVideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _draw_caption(image: np.ndarray, text: str) -> None:
    """Draws `text` on a dark band at the bottom of an RGB image, shrunk to fit its width."""
    height, width = image.shape[:2]
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    scale = max(height / 720, 0.3)
    (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    if text_w > width - 8:
        scale *= (width - 8) / text_w
        (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    band = text_h + baseline + 6
    image[height - band :] = (image[height - band :] * 0.4).astype(np.uint8)
    origin = (4, height - baseline - 3)
    cv2.putText(image, text, origin, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def write_overlay_video(
    frames: Iterable[np.ndarray],
    masks: Iterable[np.ndarray],
    path: str | Path,
    fps: float = 8.0,
    caption: str | None = None,
) -> Path:
    """Writes an mp4 of the frames with their masks overlaid (and the caption, if any)."""
    with OverlayVideoWriter(path, fps, caption) as writer:
        for frame, mask in zip(frames, masks):
            writer.write(frame, mask)
    return Path(path)
