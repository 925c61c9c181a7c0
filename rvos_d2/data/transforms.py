"""Clip-consistent augmentation: one set of random parameters for every frame of a clip.

A referring expression describes the whole clip, so every frame (and its mask) must see the same
crop, resize, flip and colour change; a horizontal flip also swaps "left" and "right" in the
expression. Image datasets become pseudo-videos through a different random affine per copy.
The random transforms themselves are detectron2's (`detectron2.data.transforms`); this module
samples them once per clip and applies the resulting `TransformList` to every frame.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial

import cv2
import numpy as np

from detectron2.config import CfgNode
from detectron2.data import transforms as T

_SIDE_WORD = re.compile(r"\b(left|right)(most|ward|wards)?\b", re.IGNORECASE)
_SWAPPED_SIDE = {"left": "right", "right": "left"}


def _swap_side_word(match: re.Match) -> str:
    word = match.group(0)
    side = match.group(1).lower()
    swapped = _SWAPPED_SIDE[side] + word[len(side) :].lower()
    if word.isupper():
        return swapped.upper()
    if word[0].isupper():
        return swapped[0].upper() + swapped[1:]
    return swapped


def swap_left_right(expression: str) -> str:
    """Swaps left/right words (also "leftmost", "rightward", "left-hand") keeping their case.

    Used after a horizontal flip so the expression still describes the flipped frames. Only whole
    words change ("bright" and "leftover" stay); "left" as a verb is swapped too.
    """
    return _SIDE_WORD.sub(_swap_side_word, expression)


def has_horizontal_flip(transform: T.Transform) -> bool:
    """True when `transform` (a TransformList or a single transform) mirrors the image."""
    parts = transform.transforms if isinstance(transform, T.TransformList) else [transform]
    return sum(isinstance(t, T.HFlipTransform) for t in parts) % 2 == 1


def _distort_colors(
    image: np.ndarray,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    image_format: str,
) -> np.ndarray:
    out = image.astype(np.float32)
    out = np.clip((out + brightness) * contrast, 0.0, 255.0)
    if saturation != 1.0 or hue != 0.0:
        to_hsv, from_hsv = (
            (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB)
            if image_format == "RGB"
            else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)
        )
        hsv = cv2.cvtColor(out, to_hsv)  # float input: H in degrees, S in [0, 1], V as given
        hsv[..., 0] = np.mod(hsv[..., 0] + hue, 360.0)
        hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0.0, 1.0)
        out = np.clip(cv2.cvtColor(hsv, from_hsv), 0.0, 255.0)
    return np.round(out).astype(np.uint8)


class PhotometricDistortion(T.Augmentation):
    """Random brightness, contrast, saturation and hue, each applied with probability 1/2.

    The sampled parameters live in the returned ColorTransform, so applying it to every frame of a
    clip changes all frames alike. Masks are left untouched.
    """

    def __init__(
        self,
        image_format: str = "RGB",
        brightness_delta: float = 32.0,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18.0,
    ):
        super().__init__()
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"PhotometricDistortion needs RGB or BGR images, got {image_format!r}")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        def maybe(low: float, high: float, identity: float) -> float:
            return float(np.random.uniform(low, high)) if np.random.rand() < 0.5 else identity

        params = {
            "brightness": maybe(-self.brightness_delta, self.brightness_delta, 0.0),
            "contrast": maybe(*self.contrast_range, 1.0),
            "saturation": maybe(*self.saturation_range, 1.0),
            "hue": maybe(-self.hue_delta, self.hue_delta, 0.0),
        }
        return T.ColorTransform(partial(_distort_colors, image_format=self.image_format, **params))


class TargetVisibleCrop(T.Augmentation):
    """detectron2's RandomCrop, retried until the clip's target stays visible in the crop.

    `sem_seg` is the union of the clip's target masks, so a crop that keeps any of it keeps the
    target in at least one frame. A clip without a visible target takes the first crop. When
    `max_tries` uniform positions all miss the target (a small target near a border), the last
    crop size is placed over a random target pixel instead, so the target always stays.
    """

    def __init__(self, crop: T.RandomCrop, max_tries: int = 10):
        super().__init__()
        if max_tries < 1:
            raise ValueError(f"TargetVisibleCrop: max_tries must be >= 1, got {max_tries}")
        self._init(locals())

    def get_transform(self, image: np.ndarray, sem_seg: np.ndarray) -> T.Transform:
        target_visible = bool(sem_seg.any())
        for _ in range(self.max_tries):
            crop = self.crop.get_transform(image)
            if not target_visible or crop.apply_segmentation(sem_seg).any():
                return crop
        ys, xs = np.nonzero(sem_seg)
        pick = np.random.randint(len(ys))
        height, width = sem_seg.shape
        y0 = np.random.randint(max(0, ys[pick] - crop.h + 1), min(ys[pick], height - crop.h) + 1)
        x0 = np.random.randint(max(0, xs[pick] - crop.w + 1), min(xs[pick], width - crop.w) + 1)
        return T.CropTransform(int(x0), int(y0), crop.w, crop.h)


class AffineTransform(T.Transform):
    """A fixed 2 x 3 affine warp (cv2.warpAffine) keeping the image size; outside is zero."""

    def __init__(self, matrix: np.ndarray, height: int, width: int):
        super().__init__()
        self._set_attributes({"matrix": np.asarray(matrix, np.float64), "h": height, "w": width})

    def _warp(self, array: np.ndarray, flags: int) -> np.ndarray:
        if array.shape[:2] != (self.h, self.w):
            raise ValueError(f"AffineTransform for {self.h}x{self.w} got an array {array.shape}")
        return cv2.warpAffine(
            array, self.matrix, (self.w, self.h), flags=flags, borderMode=cv2.BORDER_CONSTANT
        )

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return self._warp(img, cv2.INTER_LINEAR)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        warped = self._warp(segmentation.astype(np.uint8), cv2.INTER_NEAREST)
        return warped.astype(segmentation.dtype)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords @ self.matrix[:, :2].T + self.matrix[:, 2]


class RandomAffine(T.Augmentation):
    """Random rotation (degrees), isotropic scale and translation about the image centre.

    Rotation is uniform in [-rotation, rotation], scale in [1 - scale, 1 + scale] and the shift in
    [-translation, translation] times the image width / height.
    """

    def __init__(self, rotation: float = 20.0, scale: float = 0.1, translation: float = 0.1):
        super().__init__()
        if rotation < 0 or not 0 <= scale < 1 or translation < 0:
            raise ValueError(
                "RandomAffine needs rotation >= 0, 0 <= scale < 1, translation >= 0; got "
                f"{rotation}, {scale}, {translation}"
            )
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        angle = np.random.uniform(-self.rotation, self.rotation)
        factor = np.random.uniform(1 - self.scale, 1 + self.scale)
        matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, factor)
        matrix[:, 2] += np.random.uniform(-self.translation, self.translation, 2) * (w, h)
        return AffineTransform(matrix, h, w)


def make_pseudo_video(
    image: np.ndarray, mask: np.ndarray, num_frames: int, affine: T.Augmentation
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Turns one annotated image into `num_frames` frames, each with its own random affine.

    The image and its mask get the same warp, so every pseudo-frame's mask stays aligned.
    """
    frames, masks = [], []
    for _ in range(num_frames):
        tfm = affine.get_transform(image)
        frames.append(tfm.apply_image(image))
        masks.append(tfm.apply_segmentation(mask))
    return frames, masks


def augment_clip(
    augmentations: Sequence[T.Augmentation],
    frames: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
) -> tuple[list[np.ndarray], list[np.ndarray | None], T.TransformList]:
    """Samples the augmentations once and applies the same transforms to every frame and mask.

    `frames` are same-size H x W x C uint8 images; `masks` are H x W bool masks or None for a
    frame without annotation (kept None). Returns the new frames, masks and the TransformList.
    """
    if len(frames) != len(masks):
        raise ValueError(f"augment_clip: {len(frames)} frames but {len(masks)} masks")
    union = np.zeros(frames[0].shape[:2], np.uint8)
    for mask in masks:
        if mask is not None:
            union |= mask.astype(np.uint8)
    aug_input = T.AugInput(frames[0], sem_seg=union)
    transform = T.AugmentationList(list(augmentations))(aug_input)
    out_frames = [aug_input.image] + [transform.apply_image(f) for f in frames[1:]]
    out_masks = [
        None if m is None else transform.apply_segmentation(m.astype(np.uint8)).astype(bool)
        for m in masks
    ]
    return out_frames, out_masks, transform


def build_clip_augmentations(cfg: CfgNode, is_train: bool) -> list[T.Augmentation]:
    """Training: target-visible crop (INPUT.CROP), resize, horizontal flip, colour distortion.

    Inference: only ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST).
    """
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    augs: list[T.Augmentation] = []
    if cfg.INPUT.CROP.ENABLED:
        crop = T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE)
        augs.append(TargetVisibleCrop(crop, cfg.INPUT.CROP.MAX_TRIES))
    augs.append(
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    )
    if cfg.INPUT.RANDOM_FLIP == "horizontal":
        augs.append(T.RandomFlip(horizontal=True, vertical=False))
    elif cfg.INPUT.RANDOM_FLIP != "none":
        raise ValueError(
            f"INPUT.RANDOM_FLIP={cfg.INPUT.RANDOM_FLIP!r} is not supported for referring "
            "segmentation: use 'horizontal' (swaps left/right in the expression) or 'none'"
        )
    if cfg.INPUT.COLOR_AUG:
        augs.append(PhotometricDistortion(cfg.INPUT.FORMAT))
    return augs


def build_pseudo_video_affine(cfg: CfgNode) -> RandomAffine:
    """The per-frame random affine that turns an image dataset dict into a pseudo-video."""
    pv = cfg.INPUT.PSEUDO_VIDEO
    return RandomAffine(pv.ROTATION, pv.SCALE, pv.TRANSLATION)
