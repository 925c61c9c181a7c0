"""VOSDatasetMapper: STCN-style training clips with per-object masks, whole videos for inference."""

import numpy as np
import pytest
import torch
from PIL import Image

import rvos_d2  # noqa: F401  (shims and registrations)
from rvos_d2.config import load_config
from rvos_d2.data import VOSDatasetMapper, build_dataset_mapper
from rvos_d2.data.build import build_test_loader, build_train_loader
from rvos_d2.data.vos_mapper import sample_vos_clip
from tests.fixtures.vos_formats import VOS_SIZE

from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T


@pytest.fixture
def vos_dicts(vos_root, monkeypatch):
    """name -> {video_id: dataset dict} of the fixture releases."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(vos_root.root))
    names = ("ytvos2019_vos_train", "ytvos2019_vos_valid", "davis17_vos_valid")
    return {n: {d["video_id"]: d for d in DatasetCatalog.get(n)} for n in names}


def _mapper(is_train, **kwargs):
    """A mapper without augmentation (inference: resize to a short side of 40)."""
    augs = [] if is_train else [T.ResizeShortestEdge(40, 1000)]
    return VOSDatasetMapper(is_train, augmentations=augs, **kwargs)


def test_clip_sampling_keeps_order_gaps_and_bounds():
    np.random.seed(0)
    starts, gaps = set(), set()
    for _ in range(300):
        ids = sample_vos_clip(20, 3, 4)
        steps = np.diff(ids)
        assert len(ids) == 3 and 0 <= ids[0] and ids[-1] < 20
        assert ((steps >= 1) & (steps <= 4)).all()
        starts.add(ids[0])
        gaps.update(steps.tolist())
    assert gaps == {1, 2, 3, 4} and min(starts) == 0 and max(starts) >= 12
    for _ in range(50):  # too short for gaps of 4: the gaps shrink to fit
        ids = sample_vos_clip(5, 3, 4)
        assert ids[-1] < 5 and (np.diff(ids) >= 1).all() and (np.diff(ids) <= 2).all()
    short = sample_vos_clip(2, 4, 4)
    assert len(short) == 4 and set(short) == {0, 1} and short == sorted(short)


def test_training_clip_matches_the_release(vos_root, vos_dicts):
    torch.manual_seed(0)
    np.random.seed(0)
    d = vos_dicts["ytvos2019_vos_train"]["t_b"]
    truth = vos_root.id_maps[("train", "t_b")]
    mapper = _mapper(True, sampling_frame_num=3, max_objects=3, max_jump=2, reverse_prob=0.0)
    for _ in range(10):
        out = mapper(d)
        assert set(out) == {
            "image",
            "gt_masks",
            "obj_ids",
            "frame_ids",
            "height",
            "width",
            "video_id",
            "dataset_name",
        }
        assert (out["height"], out["width"]) == VOS_SIZE
        ids, objs = out["frame_ids"], out["obj_ids"]
        assert out["image"].shape == (3, 3, *VOS_SIZE) and out["image"].dtype == torch.uint8
        assert out["gt_masks"].shape == (3, len(objs), *VOS_SIZE)
        assert out["gt_masks"].dtype == torch.uint8 and out["gt_masks"].max() <= 1
        assert ids == sorted(ids) and out["video_id"] == "t_b"
        assert out["dataset_name"] == "ytvos2019_vos_train"
        # every object is visible in the first frame, and each mask is its id in the release
        first_objects = set(np.unique(truth[ids[0]]).tolist()) - {0}
        assert objs == sorted(first_objects)
        for t, frame in enumerate(ids):
            for k, obj_id in enumerate(objs):
                np.testing.assert_array_equal(out["gt_masks"][t, k].numpy(), truth[frame] == obj_id)
            assert abs(int(out["image"][t].float().mean()) - (30 * frame + 10)) <= 2


def test_object_count_is_bounded_and_every_object_is_drawn(vos_dicts):
    np.random.seed(1)
    d = vos_dicts["ytvos2019_vos_train"]["t_b"]
    mapper = _mapper(True, sampling_frame_num=2, max_objects=2, max_jump=1)
    drawn = set()
    for _ in range(40):
        out = mapper(d)
        assert 1 <= len(out["obj_ids"]) <= 2
        drawn.update(out["obj_ids"])
    assert drawn == {3, 5, 7}
    single = _mapper(True, sampling_frame_num=2, max_objects=1)
    assert all(len(single(d)["obj_ids"]) == 1 for _ in range(5))


def test_clips_start_on_a_frame_with_objects_and_can_play_backwards(vos_dicts):
    np.random.seed(2)
    d = vos_dicts["ytvos2019_vos_train"]["t_a"]
    mapper = _mapper(True, sampling_frame_num=3, max_jump=1, reverse_prob=1.0)
    for _ in range(10):
        out = mapper(d)
        assert out["frame_ids"] == sorted(out["frame_ids"], reverse=True)
        assert out["gt_masks"][0].flatten(1).any(1).all()  # every chosen object in frame 0


def test_augmented_clip_keeps_masks_aligned(vos_dicts):
    np.random.seed(3)
    cfg = load_config(None)
    cfg.INPUT.DATASET_MAPPER_NAME = "VOSDatasetMapper"
    cfg.INPUT.SAMPLING_FRAME_NUM = 3
    cfg.INPUT.MIN_SIZE_TRAIN = (48,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [14, 14]
    mapper = build_dataset_mapper(cfg, is_train=True)
    assert isinstance(mapper, VOSDatasetMapper)
    d = vos_dicts["davis17_vos_valid"]["dv-val"]
    for _ in range(5):
        out = mapper(d)
        assert out["image"].shape == (3, 3, 48, 48)
        assert out["gt_masks"].shape[:2] == (3, len(out["obj_ids"]))
        assert out["gt_masks"].shape[2:] == (48, 48)
        assert out["gt_masks"][0].flatten(1).any(1).all()
        assert set(out["obj_ids"]) <= {1, 2}  # DAVIS void (255) is never an object


def test_pseudo_video_from_an_image_dict(vos_dicts):
    np.random.seed(4)
    d = dict(vos_dicts["davis17_vos_valid"]["dv-val"])
    d.update(
        file_names=d["file_names"][:1],
        mask_annotations=d["mask_annotations"][:1],
        is_image=True,
    )
    out = _mapper(True, sampling_frame_num=4, max_objects=2)(d)
    assert out["image"].shape == (4, 3, *VOS_SIZE) and out["frame_ids"] == [0, 0, 0, 0]
    assert out["obj_ids"] == [1, 2] and out["gt_masks"].shape == (4, 2, *VOS_SIZE)


def test_inference_gives_the_whole_video_and_the_reference_masks(vos_root, vos_dicts):
    d = vos_dicts["ytvos2019_vos_valid"]["v_a"]
    out = _mapper(False)(d)
    h, w = 40, round(40 * VOS_SIZE[1] / VOS_SIZE[0])
    assert out["image"].shape == (4, 3, h, w) and out["image"].dtype == torch.uint8
    assert (out["height"], out["width"]) == VOS_SIZE
    assert out["frame_ids"] == [0, 1, 2, 3] and out["file_names"] == d["file_names"]
    assert out["obj_ids"] == [1, 4] and out["given_frames"] == [0, 2]
    assert out["given_masks"].shape == (2, h, w) and out["given_masks"].dtype == torch.uint8
    truth = vos_root.id_maps[("valid", "v_a")]
    for k, (obj_id, frame) in enumerate(zip([1, 4], [0, 2])):
        resized = Image.fromarray((truth[frame] == obj_id).astype(np.uint8)).resize(
            (w, h), Image.NEAREST
        )
        np.testing.assert_array_equal(out["given_masks"][k].numpy(), np.asarray(resized))


def test_inference_config_resizes_by_min_size_test(vos_dicts):
    cfg = load_config(None)
    cfg.INPUT.DATASET_MAPPER_NAME = "VOSDatasetMapper"
    cfg.INPUT.MIN_SIZE_TEST = 30
    out = build_dataset_mapper(cfg, is_train=False)(vos_dicts["davis17_vos_valid"]["dv-val"])
    assert out["image"].shape == (5, 3, 30, 42) and out["given_masks"].shape == (2, 30, 42)
    assert out["given_frames"] == [0, 0]


def test_missing_frame_names_the_file(vos_dicts, tmp_path):
    d = dict(vos_dicts["ytvos2019_vos_train"]["t_a"])
    d["file_names"] = [str(tmp_path / "gone.jpg")] + d["file_names"][1:]
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        _mapper(False)(d)


def test_missing_annotation_names_the_file(vos_dicts, tmp_path):
    d = dict(vos_dicts["ytvos2019_vos_valid"]["v_a"])
    d["mask_annotations"] = [{"type": "palette_png", "file": str(tmp_path / "gone.png")}] + d[
        "mask_annotations"
    ][1:]
    with pytest.raises(FileNotFoundError, match="gone.png"):
        _mapper(False)(d)


def test_training_on_sparse_annotations_is_an_error(vos_dicts):
    with pytest.raises(ValueError, match="every frame annotated"):
        _mapper(True)(vos_dicts["ytvos2019_vos_valid"]["v_a"])


def test_detectron2_loaders_batch_vos_inputs(vos_dicts):
    np.random.seed(5)
    cfg = load_config(None)
    cfg.INPUT.DATASET_MAPPER_NAME = "VOSDatasetMapper"
    cfg.INPUT.SAMPLING_FRAME_NUM = 2
    cfg.INPUT.MIN_SIZE_TRAIN = (20,)
    cfg.INPUT.MIN_SIZE_TEST = 20
    cfg.DATASETS.TRAIN = ("davis17_vos_train", "ytvos2019_vos_train")
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    batch = next(iter(build_train_loader(cfg)))
    assert len(batch) == 2 and all(b["gt_masks"].shape[0] == 2 for b in batch)
    videos = [b[0] for b in build_test_loader(cfg, "ytvos2019_vos_valid")]
    assert [v["video_id"] for v in videos] == ["v_a"] and videos[0]["given_frames"] == [0, 2]


def test_truncated_frame_names_the_file(vos_dicts, tmp_path):
    d = dict(vos_dicts["ytvos2019_vos_train"]["t_a"])
    data = open(d["file_names"][0], "rb").read()
    broken = tmp_path / "cut.jpg"
    broken.write_bytes(data[: len(data) // 2])
    d["file_names"] = [str(broken)] + d["file_names"][1:]
    with pytest.raises(OSError, match="cut.jpg"):
        _mapper(False)(d)


def test_annotation_of_another_size_names_the_file(vos_dicts, tmp_path):
    d = dict(vos_dicts["ytvos2019_vos_valid"]["v_a"])
    first = d["mask_annotations"][0]
    with Image.open(first["file"]) as img:
        smaller = img.resize((img.width // 2, img.height // 2), Image.NEAREST)
    smaller.save(tmp_path / "half.png")
    rest = d["mask_annotations"][1:]
    d["mask_annotations"] = [{**first, "file": str(tmp_path / "half.png")}, *rest]
    with pytest.raises(ValueError, match=r"v_a'.*half\.png has size .*need one size"):
        _mapper(False)(d)
