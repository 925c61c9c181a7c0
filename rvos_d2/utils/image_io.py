"""Reads an image file completely or not at all: truncated and corrupt files raise an error.

Decoders fill what a truncated JPEG or PNG lacks with grey or leave it undefined and at most
print an anonymous warning; here the decode is strict, and the error names the file.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from rvos_d2.utils.cli import InputFileError, MissingFileError

from detectron2.data.detection_utils import convert_PIL_to_numpy

__all__ = ["read_image"]


def _strict_load(image: Image.Image) -> None:
    """Decodes every pixel; a file that ends early raises OSError whatever the global setting."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        image.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def read_image(path: str | os.PathLike, format: str = "RGB") -> np.ndarray:
    """Returns the image at `path` as an H x W x C uint8 array, like detectron2's read_image.

    `format` is one of detectron2's ("RGB", "BGR", "L", ...); EXIF orientation is applied.
    Raises MissingFileError for a missing file and InputFileError
    naming the file for one that is truncated, corrupt or not an image.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            _strict_load(image)
            return convert_PIL_to_numpy(ImageOps.exif_transpose(image), format)
    except UnidentifiedImageError as err:
        raise InputFileError(f"{path} is not a readable image ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:  # PIL: truncated or corrupt data
        size = os.path.getsize(path)
        raise InputFileError(f"{path} is truncated or corrupt ({size} bytes): {err}") from err
