"""MeViS loader: multi-object targets (mask union), null RLEs, frame order, submission split."""

import json
import shutil

import numpy as np
import pytest

from rvos_d2.data import mask_io
from rvos_d2.data.datasets.mevis import load_mevis, register_mevis
from rvos_d2.data.mask_io import load_target_mask
from tests.fixtures.ytvos_formats import (
    FRAME_SIZE,
    MEVIS_EXPRESSIONS,
    MEVIS_FRAMES,
    MEVIS_TRACKS,
    box_mask,
)

from detectron2.data import DatasetCatalog, MetadataCatalog


def _expected_mask(anno_ids, frame_name):
    """Union of the fixture boxes of `anno_ids` at the frame named `frame_name`."""
    listed = MEVIS_FRAMES.index(frame_name)
    mask = np.zeros(FRAME_SIZE, bool)
    for anno in anno_ids:
        corner = MEVIS_TRACKS[str(anno)][listed]
        if corner is not None:
            mask |= box_mask(*corner)
    return mask


@pytest.mark.parametrize("split", ["train", "valid_u"])
def test_dicts_and_union_masks(mevis_root, split):
    dicts = load_mevis(str(mevis_root), split, "m")
    assert [d["exp_id"] for d in dicts] == list(MEVIS_EXPRESSIONS)
    for d in dicts:
        exp = MEVIS_EXPRESSIONS[d["exp_id"]]
        assert d["expression"] == exp["exp"] and d["video_id"] == "bird_video"
        assert d["obj_ids"] == exp["obj_id"] and d["has_masks"]
        assert d["frame_names"] == sorted(MEVIS_FRAMES) and d["length"] == 3
        assert [p.rsplit("/", 1)[-1] for p in d["file_names"]] == [
            f"{n}.jpg" for n in sorted(MEVIS_FRAMES)
        ]
        for t, name in enumerate(d["frame_names"]):
            mask = load_target_mask(d, t)
            assert mask.dtype == bool and mask.shape == FRAME_SIZE
            np.testing.assert_array_equal(mask, _expected_mask(exp["anno_id"], name))
    union = dicts[0]  # two objects: both boxes in one mask
    both = load_target_mask(union, 1)
    assert both.sum() == 2 * box_mask(0, 0).sum()


def test_target_absent_in_a_frame_gives_an_empty_mask(mevis_root):
    brief = load_mevis(str(mevis_root), "train", "m")[1]  # anno 12: only in listed frame 1
    visible = [load_target_mask(brief, t).any() for t in range(brief["length"])]
    assert visible == [name == MEVIS_FRAMES[1] for name in brief["frame_names"]]


def test_mask_dict_is_read_once_per_process(mevis_root):
    mask_io._mevis_mask_dict.cache_clear()
    d = load_mevis(str(mevis_root), "train", "m")[0]
    for t in range(d["length"]):
        load_target_mask(d, t)
    info = mask_io._mevis_mask_dict.cache_info()
    assert info.misses == 1 and info.hits >= d["length"]


def test_valid_has_no_masks(mevis_root):
    dicts = load_mevis(str(mevis_root), "valid", "mv")
    assert len(dicts) == len(MEVIS_EXPRESSIONS)
    for d in dicts:
        assert not d["has_masks"] and d["obj_ids"] == [] and "mask_annotations" not in d


def test_registered_names_and_evaluators(mevis_root):
    expected = {
        "mevis_train": "rvos",
        "mevis_valid_u": "rvos",
        "mevis_valid": "rvos_submission",
    }
    for name, evaluator in expected.items():
        assert MetadataCatalog.get(name).evaluator_type == evaluator
    default_root = MetadataCatalog.get("mevis_train").dataset_root
    register_mevis(str(mevis_root))
    try:
        dicts = DatasetCatalog.get("mevis_valid_u")
    finally:
        register_mevis(default_root)
    assert {d["dataset_name"] for d in dicts} == {"mevis_valid_u"}
    assert MetadataCatalog.get("mevis_train").dataset_root == default_root


@pytest.fixture
def broken_mevis(mevis_root, tmp_path):
    root = tmp_path / "mevis"
    shutil.copytree(mevis_root, root)
    return root


def _edit_expression(root, key, value):
    path = root / "train" / "meta_expressions.json"
    data = json.loads(path.read_text())
    data["videos"]["bird_video"]["expressions"]["0"][key] = value
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("exp", "", "bird_video.*'0'.*empty"),
        ("anno_id", [10], "'0': 2 obj_id but 1 anno_id"),
        ("obj_id", [], "'0' has no 'obj_id' list"),
        ("anno_id", ["x"], "'0': 'anno_id' holds a value that is not an integer id"),
    ],
)
def test_malformed_expressions_name_file_and_video(broken_mevis, key, value, message):
    path = _edit_expression(broken_mevis, key, value)
    with pytest.raises(ValueError, match=message) as info:
        load_mevis(str(broken_mevis), "train", "m")
    assert str(path) in str(info.value)


def test_missing_files_and_annotations_are_named(broken_mevis):
    _edit_expression(broken_mevis, "anno_id", [10, 99])
    d = load_mevis(str(broken_mevis), "train", "m")[0]
    with pytest.raises(ValueError, match=r"mask_dict.json: annotation '99' is missing"):
        load_target_mask(d, 0)
    (broken_mevis / "train" / "mask_dict.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"mask file not found: .*train/mask_dict.json"):
        load_mevis(str(broken_mevis), "train", "m")
    with pytest.raises(FileNotFoundError, match="no_such_root"):
        load_mevis(str(broken_mevis / "no_such_root"), "train", "m")
