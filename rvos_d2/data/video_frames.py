"""Frames of one video dataset dict, read on demand by the dataset mappers.

Every frame and annotation read must have the video's size: the dict's height and width when it
gives them, else the size of the first frame or annotation read. Errors name the video and file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rvos_d2.utils.image_io import read_image


def check_image_format(owner: str, image_format: str) -> None:
    """Raises naming `owner` unless `image_format` is one the mappers produce (RGB or BGR)."""
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"{owner}: image_format must be RGB or BGR, got {image_format}")


class VideoFrames:
    """Reads the frames of a dataset dict (`file_names`) one at a time, checking their sizes."""

    def __init__(self, dataset_dict: dict[str, Any], image_format: str, label: str):
        if not dataset_dict.get("file_names"):
            raise ValueError(f"{label}: no frames (file_names is empty)")
        self.dict = dataset_dict
        self.label = label
        self._format = image_format
        height, width = dataset_dict.get("height"), dataset_dict.get("width")
        self.size: tuple[int, int] | None = None
        self._size_source = "the dataset dict"
        if height is not None and width is not None:
            self.size = (int(height), int(width))

    def frame(self, idx: int) -> np.ndarray:
        """Frame `idx` as H x W x 3 uint8 in the mapper's image format."""
        path = self.dict["file_names"][idx]
        try:
            image = read_image(path, format=self._format)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{self.label}: frame file {path} does not exist") from err
        except (OSError, ValueError, SyntaxError) as err:
            raise OSError(f"{self.label}: cannot read frame {path}: {err}") from err
        self.check_size(image.shape[:2], f"frame {path}")
        return image

    def check_size(self, size: tuple[int, ...], what: str) -> None:
        """Adopts the first size seen as the video's; raises naming `what` if another differs."""
        size = (int(size[0]), int(size[1]))
        if self.size is None:
            self.size, self._size_source = size, f"its first read {what}"
        elif size != self.size:
            raise ValueError(
                f"{self.label}: {what} has size {size} (h, w) but {self._size_source} says "
                f"{self.size}; all frames and annotations of a video need one size"
            )
