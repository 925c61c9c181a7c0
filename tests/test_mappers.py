"""RVOSDatasetMapper on small on-disk videos (JPEG frames + palette PNG masks)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rvos_d2.data.mappers import RVOSDatasetMapper, sample_clip_indices
from rvos_d2.data.mask_io import load_target_mask
from rvos_d2.data.transforms import RandomAffine, swap_left_right

from detectron2.data import transforms as T

H, W = 48, 64
TARGET, OTHER = 1, 2


def _write_palette_png(path: Path, ids: np.ndarray) -> None:
    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.save(path)


def make_video(
    root: Path,
    length: int = 12,
    absent=(),
    unannotated=(),
    size=(H, W),
    expression="the dog on the left",
    is_image=False,
):
    """A video whose target is a bright square moving right; frame t is gray 8 * t."""
    root.mkdir(parents=True, exist_ok=True)
    h, w = size
    file_names, anns = [], []
    for t in range(length):
        frame = np.full((h, w, 3), 8 * t, np.uint8)
        ids = np.zeros((h, w), np.uint8)
        ids[30:40, 40:50] = OTHER
        if t not in absent:
            x = 2 + 2 * t
            ids[10:22, x : x + 12] = TARGET
            frame[10:22, x : x + 12, 0] = 250
        Image.fromarray(frame).save(root / f"{t:05d}.jpg", quality=95)
        file_names.append(str(root / f"{t:05d}.jpg"))
        if t in unannotated:
            anns.append(None)
        else:
            _write_palette_png(root / f"{t:05d}.png", ids)
            anns.append({"type": "palette_png", "file": str(root / f"{t:05d}.png")})
    return {
        "dataset_name": "tiny_train",
        "video_id": root.name,
        "exp_id": "0",
        "expression": expression,
        "file_names": file_names,
        "frame_names": [f"{t:05d}" for t in range(length)],
        "height": h,
        "width": w,
        "length": length,
        "has_masks": True,
        "obj_ids": [TARGET],
        "mask_annotations": anns,
        "is_image": is_image,
    }


def _mapper(is_train=True, augmentations=None, **kwargs):
    if augmentations is None:
        augmentations = [T.ResizeShortestEdge(32, 1000)] if is_train else []
    kwargs.setdefault("sampling_frame_num", 4)
    kwargs.setdefault("sampling_frame_range", 3)
    return RVOSDatasetMapper(is_train, augmentations=augmentations, **kwargs)


def _mask_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def _check_instances(out, num_frames):
    image = out["image"]
    assert image.dtype == torch.uint8 and image.shape[:2] == (num_frames, 3)
    assert len(out["instances"]) == num_frames
    for inst in out["instances"]:
        assert inst.image_size == tuple(image.shape[-2:]) and len(inst) == 1
        mask = inst.gt_masks.tensor[0].numpy()
        assert mask.shape == tuple(image.shape[-2:])
        assert inst.gt_boxes.tensor[0].tolist() == _mask_box(mask)
        assert inst.gt_classes.tolist() == [0]
        assert inst.gt_valid.tolist() == [bool(mask.any())]


# ---------------------------------------------------------------- clip sampling


def test_sample_clip_indices_within_range():
    np.random.seed(0)
    for _ in range(200):
        ref = np.random.randint(30)
        ids = sample_clip_indices(ref, 30, 5, 4)
        assert ids == sorted(set(ids)) and len(ids) == 5 and ref in ids
        assert all(abs(i - ref) <= 4 for i in ids)


def test_sample_clip_indices_fills_with_nearest_frames_outside_a_small_window():
    np.random.seed(0)
    assert sample_clip_indices(0, 20, 5, 1) == [0, 1, 2, 3, 4]
    assert sample_clip_indices(10, 20, 5, 0) == [8, 9, 10, 11, 12]
    assert sample_clip_indices(19, 20, 3, 1) == [17, 18, 19]


def test_short_video_repeats_frames():
    np.random.seed(0)
    for _ in range(20):
        ids = sample_clip_indices(1, 3, 5, 10)
        assert len(ids) == 5 and ids == sorted(ids) and set(ids) == {0, 1, 2}
    assert sample_clip_indices(0, 1, 4, 10) == [0, 0, 0, 0]


# ---------------------------------------------------------------- training


def test_training_output_follows_the_contract(tmp_path):
    d = make_video(tmp_path / "vid")
    np.random.seed(1)
    out = _mapper()(d)
    _check_instances(out, 4)
    assert out["image"].shape[-2:] == (32, 43)
    assert (out["height"], out["width"]) == (H, W)
    assert out["expression"] == "the dog on the left"
    assert out["file_names"] == [d["file_names"][i] for i in out["frame_ids"]]
    assert (out["video_id"], out["exp_id"], out["dataset_name"]) == ("vid", "0", "tiny_train")
    ids = out["frame_ids"]
    assert ids == sorted(set(ids)) and ids[-1] - ids[0] <= 6
    # the right frames were read: frame t is gray 8 * t
    gray = out["image"][:, :, 0, 0].float().mean(1).tolist()
    assert all(abs(g - 8 * t) <= 3 for g, t in zip(gray, ids))
    # the target mask sits on the bright target pixels
    for t in range(4):
        mask = out["instances"][t].gt_masks.tensor[0]
        assert out["instances"][t].gt_valid.item()
        assert out["image"][t, 0][mask].float().mean() > 200


def test_reference_frame_prefers_a_visible_target(tmp_path):
    """Target visible only in frame 7; clips must contain it (all annotated frames are tried)."""
    d = make_video(tmp_path / "vid", length=20, absent=[t for t in range(20) if t != 7])
    mapper = _mapper(sampling_frame_range=2, sampling_reference_tries=20)
    for seed in range(5):
        np.random.seed(seed)
        out = mapper(d)
        assert 7 in out["frame_ids"]
        valid = [inst.gt_valid.item() for inst in out["instances"]]
        assert valid == [i == 7 for i in out["frame_ids"]]


def test_absent_object_is_invalid_with_empty_mask(tmp_path):
    d = make_video(tmp_path / "vid", length=6, absent=[1, 3])
    np.random.seed(0)
    out = _mapper(sampling_frame_num=6)(d)
    assert out["frame_ids"] == list(range(6))
    _check_instances(out, 6)
    for t, inst in enumerate(out["instances"]):
        assert inst.gt_valid.item() == (t not in (1, 3))
        assert inst.gt_annotated.item()
        if t in (1, 3):
            assert not inst.gt_masks.tensor.any() and not inst.gt_boxes.tensor.any()


def test_unannotated_frames_are_invalid_and_marked(tmp_path):
    d = make_video(tmp_path / "vid", length=6, unannotated=[0, 2, 4, 5])
    np.random.seed(0)
    out = _mapper(sampling_frame_num=6)(d)
    _check_instances(out, 6)
    annotated = [inst.gt_annotated.item() for inst in out["instances"]]
    valid = [inst.gt_valid.item() for inst in out["instances"]]
    assert annotated == [False, True, False, True, False, False]
    assert valid == annotated


def test_reference_is_always_an_annotated_frame_and_its_position_is_given(tmp_path):
    d = make_video(tmp_path / "vid", length=30, unannotated=[t for t in range(30) if t != 20])
    mapper = _mapper(sampling_frame_range=2)
    for seed in range(5):
        np.random.seed(seed)
        out = mapper(d)
        assert out["frame_ids"][out["reference_frame"]] == 20


def test_horizontal_flip_mirrors_frames_masks_and_words(tmp_path):
    d = make_video(tmp_path / "vid", length=4)
    plain = _mapper(augmentations=[], sampling_frame_num=4)(d)
    flipped = _mapper(augmentations=[T.RandomFlip(prob=1.0)], sampling_frame_num=4)(d)
    assert plain["expression"] == "the dog on the left"
    assert flipped["expression"] == "the dog on the right"
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    for a, b in zip(plain["instances"], flipped["instances"]):
        assert torch.equal(b.gt_masks.tensor, a.gt_masks.tensor.flip(-1))


def test_clip_of_identical_frames_stays_identical_under_full_augmentation(tmp_path, rvos_cfg):
    d = make_video(tmp_path / "vid", length=1)  # one frame repeated to T
    rvos_cfg.INPUT.MIN_SIZE_TRAIN = (24, 32, 40)
    rvos_cfg.INPUT.MAX_SIZE_TRAIN = 100
    rvos_cfg.INPUT.CROP.ENABLED = True
    rvos_cfg.INPUT.SAMPLING_FRAME_NUM = 3
    mapper = RVOSDatasetMapper(rvos_cfg, is_train=True)
    for seed in range(5):
        np.random.seed(seed)
        out = mapper(d)
        assert out["frame_ids"] == [0, 0, 0]
        _check_instances(out, 3)
        for t in (1, 2):
            assert torch.equal(out["image"][t], out["image"][0])
            assert torch.equal(
                out["instances"][t].gt_masks.tensor, out["instances"][0].gt_masks.tensor
            )
        assert out["instances"][0].gt_valid.item()  # the crop kept the target


def test_image_dict_becomes_a_pseudo_video(tmp_path):
    d = make_video(tmp_path / "img", length=1, size=(60, 80), is_image=True)
    mapper = _mapper(augmentations=[], sampling_frame_num=5, pseudo_video_affine=RandomAffine(20))
    np.random.seed(0)
    out = mapper(d)
    _check_instances(out, 5)
    assert out["frame_ids"] == [0] * 5 and out["image"].shape == (5, 3, 60, 80)
    masks = [inst.gt_masks.tensor[0] for inst in out["instances"]]
    assert not all(torch.equal(masks[0], m) for m in masks[1:])
    for t, mask in enumerate(masks):
        red = out["image"][t, 0].float()
        assert mask.sum() > 50 and (red[mask] > 120).float().mean() > 0.95
        assert (red[~mask] > 120).float().mean() < 0.02


# ---------------------------------------------------------------- inference


def test_inference_gives_strided_resized_frames_and_original_size(tmp_path, rvos_cfg):
    d = make_video(tmp_path / "vid", length=7)
    d["height"] = d["width"] = None  # filled from the frames
    rvos_cfg.INPUT.MIN_SIZE_TEST = 24
    rvos_cfg.INPUT.MAX_SIZE_TEST = 1000
    rvos_cfg.INPUT.TEST_FRAME_STRIDE = 2
    out = RVOSDatasetMapper(rvos_cfg, is_train=False)(d)
    assert out["frame_ids"] == [0, 2, 4, 6]
    assert out["image"].shape == (4, 3, 24, 32)
    assert (out["height"], out["width"]) == (H, W)
    assert out["expression"] == "the dog on the left"
    assert "instances" not in out
    rvos_cfg.INPUT.TEST_WITH_GT = True
    out = RVOSDatasetMapper(rvos_cfg, is_train=False)(d)
    _check_instances(out, 4)
    assert all(inst.gt_valid.item() for inst in out["instances"])


def test_inference_without_masks(tmp_path):
    d = make_video(tmp_path / "vid", length=3)
    d["has_masks"] = False
    del d["mask_annotations"]
    out = _mapper(is_train=False, test_with_gt=True)(d)
    assert out["image"].shape == (3, 3, H, W) and "instances" not in out


# ---------------------------------------------------------------- bad input


def test_missing_frame_file(tmp_path):
    d = make_video(tmp_path / "vid", length=3)
    Path(d["file_names"][1]).unlink()
    with pytest.raises(FileNotFoundError, match=r"video 'vid'.*00001\.jpg does not exist"):
        _mapper(is_train=False)(d)


def test_unreadable_frame(tmp_path):
    d = make_video(tmp_path / "vid", length=3)
    Path(d["file_names"][2]).write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match=r"video 'vid'.*cannot read frame .*00002\.jpg"):
        _mapper(is_train=False)(d)


@pytest.mark.parametrize("expression", ["", "   ", None])
def test_empty_expression(tmp_path, expression):
    d = make_video(tmp_path / "vid", length=2, expression=expression)
    with pytest.raises(ValueError, match=r"video 'vid' expression '0'.*empty"):
        _mapper()(d)


def test_frames_of_different_sizes(tmp_path):
    d = make_video(tmp_path / "vid", length=3)
    Image.new("RGB", (W + 2, H)).save(d["file_names"][2])
    with pytest.raises(ValueError, match=r"video 'vid'.*00002\.jpg has size \(48, 66\)"):
        _mapper(is_train=False)(d)
    d["height"] = d["width"] = None
    with pytest.raises(ValueError, match=r"00002\.jpg has size.*first read frame .*00000\.jpg"):
        _mapper(is_train=False)(d)


def test_mask_of_a_different_size_than_its_frame(tmp_path):
    d = make_video(tmp_path / "vid", length=3)
    _write_palette_png(Path(d["mask_annotations"][1]["file"]), np.ones((H, W - 4)))
    with pytest.raises(ValueError, match=r"vid frame 1: mask .*00001\.png has size"):
        _mapper(sampling_frame_num=3)(d)


def test_training_needs_masks_and_an_annotated_frame(tmp_path):
    d = make_video(tmp_path / "vid", length=3, unannotated=[0, 1, 2])
    with pytest.raises(ValueError, match=r"video 'vid'.*no annotated frame"):
        _mapper()(d)
    d["has_masks"] = False
    with pytest.raises(ValueError, match=r"video 'vid'.*training needs target masks"):
        _mapper()(d)


def test_annotation_count_must_match_the_frames(tmp_path):
    d = make_video(tmp_path / "vid", length=3)
    d["mask_annotations"] = d["mask_annotations"][:2]
    with pytest.raises(ValueError, match=r"video 'vid'.*2 mask_annotations for 3 frames"):
        _mapper(is_train=False, test_with_gt=True)(d)


def test_bad_mapper_arguments():
    with pytest.raises(ValueError, match="image_format"):
        _mapper(image_format="L")
    with pytest.raises(ValueError, match="sampling_frame_num"):
        _mapper(sampling_frame_num=0)
    with pytest.raises(ValueError, match="test_frame_stride"):
        _mapper(test_frame_stride=0)


# ---------------------------------------------------------------- synthetic dataset


def test_synthetic_training_clips(synth_root, rvos_cfg):
    from detectron2.data import DatasetCatalog

    rvos_cfg.INPUT.MIN_SIZE_TRAIN = (48, 64, 80)
    rvos_cfg.INPUT.MAX_SIZE_TRAIN = 128
    rvos_cfg.INPUT.CROP.ENABLED = True
    rvos_cfg.INPUT.SAMPLING_FRAME_NUM = 3
    rvos_cfg.INPUT.SAMPLING_FRAME_RANGE = 2
    mapper = RVOSDatasetMapper(rvos_cfg, is_train=True)
    np.random.seed(0)
    swapped = 0
    for d in DatasetCatalog.get("synth_test_train"):
        out = mapper(d)
        _check_instances(out, 3)
        assert (out["height"], out["width"]) == (d["height"], d["width"])
        assert max(out["image"].shape[-2:]) <= 128
        assert any(inst.gt_valid.item() for inst in out["instances"])
        if out["expression"] != d["expression"]:
            assert out["expression"] == swap_left_right(d["expression"])
            swapped += 1
    assert swapped > 0  # some expression with left/right was flipped


def test_synthetic_inference_masks_match_the_annotations(synth_root, rvos_cfg):
    from detectron2.data import DatasetCatalog

    rvos_cfg.INPUT.MIN_SIZE_TEST = 32
    rvos_cfg.INPUT.TEST_WITH_GT = True
    mapper = RVOSDatasetMapper(rvos_cfg, is_train=False)
    d = DatasetCatalog.get("synth_test_valid")[0]
    out = mapper(d)
    assert out["frame_ids"] == list(range(d["length"]))
    assert out["image"].shape == (d["length"], 3, 32, 32)
    _check_instances(out, d["length"])
    for i, inst in zip(out["frame_ids"], out["instances"]):
        full = load_target_mask(d, i).reshape(32, 2, 32, 2).mean(axis=(1, 3))  # 2x2 block means
        expected, got = full >= 0.5, inst.gt_masks.tensor[0].numpy()
        if expected.any():
            assert (expected & got).sum() / (expected | got).sum() > 0.8
            assert inst.gt_valid.item()
