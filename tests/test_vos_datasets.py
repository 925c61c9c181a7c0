"""VOS dataset registration and dataset dicts: YouTube-VOS 2019, DAVIS-2017, synthetic VOS view."""

import json
import shutil

import numpy as np
import pytest

import rvos_d2  # noqa: F401  (shims and registrations)
from rvos_d2.data.datasets.vos import load_id_map, register_synthetic_vos
from tests.fixtures.vos_formats import VOS_SIZE, frame_names

from detectron2.data import DatasetCatalog, MetadataCatalog

NAMES = {
    "ytvos2019_vos_train": True,
    "ytvos2019_vos_valid": False,
    "ytvos2019_vos_valid_all_frames": False,
    "davis17_vos_train": True,
    "davis17_vos_valid": True,
    "rvos_synth_vos_train": True,
    "rvos_synth_vos_valid": True,
}


@pytest.fixture
def vos_env(vos_root, monkeypatch):
    """The fixture releases as $DETECTRON2_DATASETS, read through the default registrations."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(vos_root.root))
    return vos_root


def _by_video(name):
    return {d["video_id"]: d for d in DatasetCatalog.get(name)}


def test_names_are_registered_with_the_vos_evaluator():
    for name, has_masks in NAMES.items():
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "vos" and meta.has_masks is has_masks, name


def test_ytvos_train_dicts(vos_env):
    dicts = _by_video("ytvos2019_vos_train")
    assert sorted(dicts) == ["t_a", "t_b"]
    d = dicts["t_b"]
    root = vos_env.root / "ytvos2019" / "train"
    names = frame_names(4, 5)
    assert d["frame_names"] == names and d["length"] == 4
    assert d["file_names"] == [str(root / "JPEGImages" / "t_b" / f"{n}.jpg") for n in names]
    assert d["obj_ids"] == [3, 5, 7] and d["first_frames"] == [0, 0, 0]
    assert dicts["t_a"]["obj_ids"] == [1, 2] and dicts["t_a"]["first_frames"] == [0, 2]
    assert d["has_masks"] is True and d["output_frames"] == [0, 1, 2, 3]
    assert d["height"] is None and d["width"] is None  # YouTube-VOS states no size
    assert d["mask_annotations"] == [
        {"type": "palette_png", "file": str(root / "Annotations" / "t_b" / f"{n}.png")}
        for n in names
    ]
    for t in range(4):
        np.testing.assert_array_equal(load_id_map(d, t), vos_env.id_maps[("train", "t_b")][t])


def test_ytvos_valid_is_annotated_where_objects_first_appear(vos_env):
    d = _by_video("ytvos2019_vos_valid")["v_a"]
    assert d["obj_ids"] == [1, 4] and d["first_frames"] == [0, 2]
    assert d["has_masks"] is False
    assert [a is not None for a in d["mask_annotations"]] == [True, False, True, False]
    truth = vos_env.id_maps[("valid", "v_a")]
    np.testing.assert_array_equal(load_id_map(d, 2), np.where(truth[2] == 4, 4, 0))
    assert load_id_map(d, 1) is None


def test_ytvos_valid_all_frames_reads_every_frame_and_outputs_the_split_frames(vos_env):
    d = _by_video("ytvos2019_vos_valid_all_frames")["v_a"]
    assert d["length"] == 16 and d["frame_names"] == frame_names(16, 1)
    assert "valid_all_frames" in d["file_names"][0]
    assert d["first_frames"] == [0, 10]  # frame 00010 is index 10 among all frames
    assert d["output_frames"] == [0, 5, 10, 15]
    annotated = [t for t, a in enumerate(d["mask_annotations"]) if a is not None]
    assert annotated == [0, 10]
    assert d["mask_annotations"][10]["file"].endswith("valid/Annotations/v_a/00010.png")


def test_davis_dicts_take_the_objects_of_the_first_frame(vos_env):
    d = _by_video("davis17_vos_valid")["dv-val"]
    assert list(_by_video("davis17_vos_train")) == ["dv-train"]
    assert d["obj_ids"] == [1, 2] and d["first_frames"] == [0, 0]  # void (255) is no object
    assert (d["height"], d["width"]) == VOS_SIZE
    assert d["length"] == 5 and d["has_masks"] is True
    assert d["file_names"][3] == str(vos_env.root / "DAVIS/JPEGImages/480p/dv-val/00003.jpg")
    np.testing.assert_array_equal(load_id_map(d, 3), vos_env.id_maps[("val", "dv-val")][3])


def test_synthetic_vos_view_makes_every_object_a_target(synth_root):
    names = register_synthetic_vos(synth_root, prefix="synth_test_vos")
    assert names == ["synth_test_vos_train", "synth_test_vos_valid"]
    meta = json.loads((synth_root / "train" / "meta.json").read_text())["videos"]
    dicts = DatasetCatalog.get("synth_test_vos_train")
    assert sorted(d["video_id"] for d in dicts) == sorted(meta)
    for d in dicts:
        objects = meta[d["video_id"]]["objects"]
        assert d["obj_ids"] == sorted(int(k) for k in objects)
        assert (d["height"], d["width"]) == (meta[d["video_id"]]["height"],) * 2
        assert all(a is not None for a in d["mask_annotations"])
        for obj_id, first in zip(d["obj_ids"], d["first_frames"]):
            assert (load_id_map(d, first) == obj_id).any()
            assert all(not (load_id_map(d, t) == obj_id).any() for t in range(first))


@pytest.fixture
def broken_root(vos_root, tmp_path, monkeypatch):
    """A private copy of the releases, to delete files from."""
    root = tmp_path / "datasets"
    shutil.copytree(vos_root.root, root)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    return root


def test_missing_meta_json_names_it(broken_root):
    (broken_root / "ytvos2019" / "train" / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"ytvos2019/train/meta\.json"):
        DatasetCatalog.get("ytvos2019_vos_train")


def test_missing_annotation_names_it(broken_root):
    (broken_root / "ytvos2019" / "train" / "Annotations" / "t_a" / "00010.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"Annotations/t_a/00010\.png"):
        DatasetCatalog.get("ytvos2019_vos_train")
    (broken_root / "ytvos2019" / "valid" / "Annotations" / "v_a" / "00010.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"valid/Annotations/v_a/00010\.png"):
        DatasetCatalog.get("ytvos2019_vos_valid")
    (broken_root / "DAVIS" / "Annotations" / "480p" / "dv-val" / "00004.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"480p/dv-val/00004\.png"):
        DatasetCatalog.get("davis17_vos_valid")


def test_missing_first_frame_names_it(broken_root):
    (broken_root / "ytvos2019" / "valid" / "JPEGImages" / "v_a" / "00010.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"JPEGImages/v_a/00010\.jpg"):
        DatasetCatalog.get("ytvos2019_vos_valid")


def test_missing_root_names_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS"):
        DatasetCatalog.get("davis17_vos_train")
