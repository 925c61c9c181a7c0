"""Clip-consistent transforms: same parameters per clip, flip word swap, crop, pseudo-videos."""

import math

import numpy as np
import pytest

from rvos_d2.data.transforms import (
    PhotometricDistortion,
    RandomAffine,
    TargetVisibleCrop,
    augment_clip,
    build_clip_augmentations,
    build_pseudo_video_affine,
    has_horizontal_flip,
    make_pseudo_video,
    swap_left_right,
)

from detectron2.data import transforms as T


def _textured_frame(h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _box_mask(h, w, y0, y1, x0, x1):
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.mark.parametrize(
    "text, expected",
    [
        ("the man on the left", "the man on the right"),
        ("Left dog next to a cat", "Right dog next to a cat"),
        ("LEFTMOST car", "RIGHTMOST car"),
        ("the rightmost bird, left of the tree", "the leftmost bird, right of the tree"),
        ("his left-hand side", "his right-hand side"),
        ("moving Rightwards", "moving Leftwards"),
        ("a bright leftover copyright sign", "a bright leftover copyright sign"),
        ("a cat jumping", "a cat jumping"),
    ],
)
def test_swap_left_right(text, expected):
    assert swap_left_right(text) == expected
    assert swap_left_right(swap_left_right(text)) == text


def test_has_horizontal_flip_counts_flips():
    flip = T.HFlipTransform(10)
    assert has_horizontal_flip(flip)
    assert has_horizontal_flip(T.TransformList([T.NoOpTransform(), flip]))
    assert not has_horizontal_flip(T.TransformList([flip, flip]))
    assert not has_horizontal_flip(T.TransformList([T.NoOpTransform()]))


def _training_augs(crop_size=(0.5, 0.5)):
    crop = TargetVisibleCrop(T.RandomCrop("relative_range", crop_size), max_tries=10)
    return [
        crop,
        T.ResizeShortestEdge((20, 60), 200, "range"),
        T.RandomFlip(prob=0.5),
        PhotometricDistortion("RGB"),
    ]


@pytest.mark.parametrize("seed", range(6))
def test_identical_frames_stay_identical(seed):
    np.random.seed(seed)
    frame = _textured_frame()
    mask = _box_mask(40, 56, 10, 25, 20, 40)
    frames, masks, tfm = augment_clip(
        _training_augs(), [frame.copy() for _ in range(4)], [mask] * 4
    )
    for f, m in zip(frames[1:], masks[1:]):
        np.testing.assert_array_equal(f, frames[0])
        np.testing.assert_array_equal(m, masks[0])
    assert frames[0].shape[:2] == masks[0].shape
    crops = [t for t in tfm.transforms if isinstance(t, T.CropTransform)]
    assert len(crops) <= 1  # one crop box, shared by all frames


def test_clip_transform_matches_each_frame_alone():
    """Different frames get exactly the transform that frame 0 got."""
    np.random.seed(3)
    frames_in = [_textured_frame(seed=s) for s in range(3)]
    masks_in = [_box_mask(40, 56, 5 + 5 * s, 20 + 5 * s, 10, 30) for s in range(3)]
    frames, masks, tfm = augment_clip(_training_augs(), frames_in, masks_in)
    for f_in, m_in, f_out, m_out in zip(frames_in, masks_in, frames, masks):
        np.testing.assert_array_equal(tfm.apply_image(f_in), f_out)
        np.testing.assert_array_equal(tfm.apply_segmentation(m_in.astype(np.uint8)) > 0, m_out)


def test_flip_mirrors_image_and_mask_together():
    frame = _textured_frame()
    mask = _box_mask(40, 56, 5, 15, 0, 10)  # at the left border
    frames, masks, tfm = augment_clip([T.RandomFlip(prob=1.0)], [frame, frame], [mask, None])
    assert has_horizontal_flip(tfm)
    np.testing.assert_array_equal(frames[0], frame[:, ::-1])
    np.testing.assert_array_equal(frames[1], frame[:, ::-1])
    np.testing.assert_array_equal(masks[0], mask[:, ::-1])
    assert masks[0][5:15, 46:].all() and masks[1] is None


@pytest.mark.parametrize("max_tries", [1, 10])
def test_crop_keeps_target_visible(max_tries):
    """The target is a 2x2 patch in a corner of one frame only; every crop must keep it."""
    frames = [_textured_frame(seed=s) for s in range(3)]
    masks = [np.zeros((40, 56), bool), _box_mask(40, 56, 38, 40, 54, 56), None]
    crop = TargetVisibleCrop(T.RandomCrop("relative", (0.6, 0.6)), max_tries=max_tries)
    for seed in range(20):
        np.random.seed(seed)
        out_frames, out_masks, tfm = augment_clip([crop], frames, masks)
        assert out_frames[0].shape[:2] == out_masks[1].shape == (24, 34)
        assert out_masks[1].any() and not out_masks[0].any() and out_masks[2] is None
        assert isinstance(tfm.transforms[0], T.CropTransform)


class _FixedCrop(T.RandomCrop):
    """Always proposes the same crop box, away from the test's target."""

    def get_transform(self, image):
        return T.CropTransform(30, 20, 20, 10)


def test_crop_fallback_places_the_crop_over_the_target():
    frame = _textured_frame()
    mask = _box_mask(40, 56, 0, 3, 0, 3)
    crop = TargetVisibleCrop(_FixedCrop("absolute", (10, 20)), max_tries=3)
    for seed in range(5):
        np.random.seed(seed)
        frames, masks, tfm = augment_clip([crop], [frame], [mask])
        box = tfm.transforms[0]
        assert (box.h, box.w) == (10, 20) and (box.x0, box.y0) != (30, 20)
        assert masks[0].any()
        np.testing.assert_array_equal(frames[0], frame[box.y0 : box.y0 + 10, box.x0 : box.x0 + 20])
    # without any visible target the first proposed crop is taken
    _, _, tfm = augment_clip([crop], [frame], [np.zeros((40, 56), bool)])
    assert (tfm.transforms[0].x0, tfm.transforms[0].y0) == (30, 20)
    with pytest.raises(ValueError, match="max_tries"):
        TargetVisibleCrop(T.RandomCrop("relative", (0.5, 0.5)), max_tries=0)


def test_photometric_distortion_changes_colors_not_masks():
    frame = _textured_frame()
    mask = _box_mask(40, 56, 10, 25, 20, 40)
    changed = 0
    for seed in range(8):
        np.random.seed(seed)
        frames, masks, _ = augment_clip([PhotometricDistortion("BGR")], [frame], [mask])
        assert frames[0].dtype == np.uint8 and frames[0].shape == frame.shape
        np.testing.assert_array_equal(masks[0], mask)
        changed += int(not np.array_equal(frames[0], frame))
    assert changed >= 4
    with pytest.raises(ValueError, match="RGB or BGR"):
        PhotometricDistortion("L")


def test_pseudo_video_masks_follow_their_warped_images():
    h, w = 60, 80
    image = np.full((h, w, 3), 20, np.uint8)
    image[20:40, 30:50] = 230
    mask = _box_mask(h, w, 20, 40, 30, 50)
    np.random.seed(0)
    frames, masks = make_pseudo_video(image, mask, 5, RandomAffine(20.0, 0.1, 0.1))
    assert len(frames) == len(masks) == 5
    for frame, m in zip(frames, masks):
        assert frame.shape == image.shape and m.dtype == bool and m.shape == (h, w)
        inside = frame[..., 0][m]
        assert inside.size > 200 and (inside > 120).mean() > 0.95
        outside = frame[..., 0][~m]
        assert (outside > 120).mean() < 0.01
    assert not all(np.array_equal(masks[0], m) for m in masks[1:])


def test_random_affine_respects_its_bounds():
    image = np.zeros((50, 70, 3), np.uint8)
    aug = RandomAffine(rotation=20.0, scale=0.1, translation=0.1)
    for seed in range(30):
        np.random.seed(seed)
        matrix = aug.get_transform(image).matrix
        scale = math.hypot(matrix[0, 0], matrix[1, 0])
        angle = math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
        assert 0.9 - 1e-6 <= scale <= 1.1 + 1e-6
        assert abs(angle) <= 20.0 + 1e-6
    with pytest.raises(ValueError, match="RandomAffine"):
        RandomAffine(scale=1.5)


def test_build_clip_augmentations_from_config(rvos_cfg):
    rvos_cfg.INPUT.CROP.ENABLED = True
    augs = build_clip_augmentations(rvos_cfg, is_train=True)
    kinds = [type(a) for a in augs]
    assert kinds == [TargetVisibleCrop, T.ResizeShortestEdge, T.RandomFlip, PhotometricDistortion]
    test_augs = build_clip_augmentations(rvos_cfg, is_train=False)
    assert [type(a) for a in test_augs] == [T.ResizeShortestEdge]
    rvos_cfg.INPUT.RANDOM_FLIP = "none"
    rvos_cfg.INPUT.COLOR_AUG = False
    rvos_cfg.INPUT.CROP.ENABLED = False
    assert [type(a) for a in build_clip_augmentations(rvos_cfg, True)] == [T.ResizeShortestEdge]
    rvos_cfg.INPUT.RANDOM_FLIP = "vertical"
    with pytest.raises(ValueError, match="INPUT.RANDOM_FLIP"):
        build_clip_augmentations(rvos_cfg, is_train=True)
    assert build_pseudo_video_affine(rvos_cfg).rotation == rvos_cfg.INPUT.PSEUDO_VIDEO.ROTATION
