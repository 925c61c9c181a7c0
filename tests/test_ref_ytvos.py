"""Ref-YouTube-VOS loader: dict contract, masks, held-out slice, registration, errors, speed."""

import json
import shutil
import time

import numpy as np
import pytest

from rvos_d2.data.datasets.ref_ytvos import (
    in_holdout,
    load_ref_ytvos,
    register_ref_ytvos_split,
)
from rvos_d2.data.mask_io import load_target_mask
from tests.fixtures.ytvos_formats import (
    FRAME_SIZE,
    YTVOS_FRAMES,
    YTVOS_TRAIN,
    YTVOS_TRAIN_EXPRESSIONS,
    box_mask,
    write_json,
)

from detectron2.data import DatasetCatalog, MetadataCatalog

CONTRACT_KEYS = {
    "dataset_name", "video_id", "exp_id", "expression", "file_names", "frame_names",
    "height", "width", "length", "has_masks", "obj_ids",
}  # fmt: skip


def test_train_dicts_follow_the_contract(ref_ytvos_root):
    dicts = load_ref_ytvos(str(ref_ytvos_root), "train", "t", has_masks=True)
    assert [(d["video_id"], d["exp_id"]) for d in dicts] == [
        (v, e) for v in sorted(YTVOS_TRAIN_EXPRESSIONS) for e in YTVOS_TRAIN_EXPRESSIONS[v]
    ]
    for d in dicts:
        assert CONTRACT_KEYS | {"mask_annotations"} == set(d)
        text, obj_id = YTVOS_TRAIN_EXPRESSIONS[d["video_id"]][d["exp_id"]]
        assert d["expression"] == " ".join(text.split())
        assert d["obj_ids"] == [obj_id]
        assert d["frame_names"] == YTVOS_FRAMES  # sorted although listed in reverse
        assert d["length"] == len(YTVOS_FRAMES) == len(d["mask_annotations"])
        assert d["has_masks"] and d["dataset_name"] == "t"
        assert (d["height"], d["width"]) == (None, None)
        for path, name in zip(d["file_names"], YTVOS_FRAMES):
            assert path.endswith(f"train/JPEGImages/{d['video_id']}/{name}.jpg")
            assert (
                ref_ytvos_root / "train" / "JPEGImages" / d["video_id"] / f"{name}.jpg"
            ).exists()


def test_masks_select_the_object_and_absent_frames_are_empty(ref_ytvos_root):
    dicts = load_ref_ytvos(str(ref_ytvos_root), "train", "t", has_masks=True)
    for d in dicts:
        corners = YTVOS_TRAIN[d["video_id"]][d["obj_ids"][0]]
        for t, corner in enumerate(corners):
            mask = load_target_mask(d, t)
            assert mask.shape == FRAME_SIZE and mask.dtype == bool
            expected = box_mask(*corner) if corner is not None else np.zeros(FRAME_SIZE, bool)
            np.testing.assert_array_equal(mask, expected)
    absent = [d for d in dicts if d["video_id"] == "vid_a" and d["obj_ids"] == [1]][0]
    assert not load_target_mask(absent, 2).any()


def test_size_check_applies_when_the_size_is_known(ref_ytvos_root):
    d = load_ref_ytvos(str(ref_ytvos_root), "train", "t", has_masks=True)[0]
    d["height"], d["width"] = FRAME_SIZE[0] + 1, FRAME_SIZE[1]
    with pytest.raises(ValueError, match="has size"):
        load_target_mask(d, 0)


def test_valid_has_no_masks_and_drops_test_videos(ref_ytvos_root):
    dicts = load_ref_ytvos(str(ref_ytvos_root), "valid", "v", has_masks=False, exclude_split="test")
    assert sorted({d["video_id"] for d in dicts}) == ["val_1", "val_2"]
    assert len(dicts) == 4
    for d in dicts:
        assert set(d) == CONTRACT_KEYS
        assert not d["has_masks"] and d["obj_ids"] == []
    every = load_ref_ytvos(str(ref_ytvos_root), "valid", "v", has_masks=False)
    assert {d["video_id"] for d in every} == {"val_1", "val_2", "test_1"}


def test_builtin_names_are_registered_lazily():
    for name, evaluator in [
        ("ref_ytvos_train", "rvos"),
        ("ref_ytvos_train_sub", "rvos"),
        ("ref_ytvos_train_holdout", "rvos"),
        ("ref_ytvos_valid", "rvos_submission"),
    ]:
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).evaluator_type == evaluator


def test_registration_reads_nothing_and_loading_names_the_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    register_ref_ytvos_split("ytvos_test_missing", str(missing), "train", True, "rvos")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DatasetCatalog.get("ytvos_test_missing")


def _write_meta_only_root(root, num_videos, num_frames=36, num_expressions=2):
    """Expressions and object meta of `num_videos` videos, without any image."""
    frames = [f"{5 * i:05d}" for i in range(num_frames)]
    videos = [f"{i:010x}" for i in range(num_videos)]
    exps = {
        v: {
            "expressions": {
                str(e): {"exp": f"object {e} of {v}", "obj_id": str(e + 1)}
                for e in range(num_expressions)
            },
            "frames": frames,
        }
        for v in videos
    }
    objects = {str(o + 1): {"category": "x", "frames": frames} for o in range(num_expressions)}
    write_json(root / "meta_expressions" / "train" / "meta_expressions.json", {"videos": exps})
    write_json(root / "train" / "meta.json", {"videos": {v: {"objects": objects} for v in videos}})
    return videos


def test_holdout_and_sub_partition_train(tmp_path):
    import rvos_d2.data.datasets.ref_ytvos as ref_ytvos

    videos = _write_meta_only_root(tmp_path, 200, num_frames=2, num_expressions=1)
    ref_ytvos.register_all_ref_ytvos(str(tmp_path))
    try:
        sub = DatasetCatalog.get("ref_ytvos_train_sub")
        hold = DatasetCatalog.get("ref_ytvos_train_holdout")
    finally:
        ref_ytvos.register_all_ref_ytvos(str(ref_ytvos.datasets_root() / "ref-youtube-vos"))
    held = {d["video_id"] for d in hold}
    assert held == {v for v in videos if in_holdout(v)} and 0 < len(held) < 30
    assert {d["video_id"] for d in sub} == set(videos) - held
    assert {d["dataset_name"] for d in hold} == {"ref_ytvos_train_holdout"}
    assert MetadataCatalog.get("ref_ytvos_train_holdout").dataset_root.endswith("ref-youtube-vos")


def test_in_holdout_is_a_stable_five_percent_slice():
    ids = [f"{i:010x}" for i in range(4000)]
    share = np.mean([in_holdout(v) for v in ids])
    assert 0.03 < share < 0.07
    assert [in_holdout(v) for v in ids[:200]] == [in_holdout(v) for v in ids[:200]]


@pytest.fixture
def broken_root(ref_ytvos_root, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(ref_ytvos_root, root)
    return root


def _edit_train_expressions(root, edit):
    path = root / "meta_expressions" / "train" / "meta_expressions.json"
    data = json.loads(path.read_text())
    edit(data["videos"])
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda v: v["vid_a"]["expressions"]["1"].update(exp="  "), "vid_a.*'1'.*empty"),
        (lambda v: v["vid_a"]["expressions"]["1"].pop("exp"), "vid_a.*'1'.*no 'exp'"),
        (lambda v: v["vid_a"]["expressions"]["1"].update(obj_id="7"), "vid_a.*'1'.*object '7'"),
        (lambda v: v["vid_b"].update(frames=[]), "vid_b.*no frames"),
        (lambda v: v["vid_b"].pop("frames"), "vid_b.*no frames"),
        (lambda v: v["vid_b"].pop("expressions"), "vid_b.*no 'expressions'"),
    ],
)
def test_malformed_entries_name_file_and_video(broken_root, edit, message):
    path = _edit_train_expressions(broken_root, edit)
    with pytest.raises(ValueError, match=message) as info:
        load_ref_ytvos(str(broken_root), "train", "t", has_masks=True)
    assert str(path) in str(info.value)


def _expect_load_error(root, error, message):
    """Loading the train split of `root` raises `error` with a message matching `message`."""
    with pytest.raises(error, match=message):
        load_ref_ytvos(str(root), "train", "t", has_masks=True)


def test_missing_and_malformed_files_are_named(broken_root):
    meta = broken_root / "train" / "meta.json"
    data = json.loads(meta.read_text())
    meta.write_text(json.dumps({"videos": {"vid_a": data["videos"]["vid_a"]}}))
    _expect_load_error(broken_root, ValueError, r"meta.json: video 'vid_b' is missing")
    meta.write_text("{not json")
    _expect_load_error(broken_root, ValueError, r"meta.json is not valid json")
    meta.unlink()
    _expect_load_error(broken_root, FileNotFoundError, r"object meta file not found: .*meta.json")
    exp = broken_root / "meta_expressions" / "train" / "meta_expressions.json"
    exp.write_text('{"no_videos": 1}')
    _expect_load_error(broken_root, ValueError, r"meta_expressions.json: expected .* 'videos'")
    exp.unlink()
    _expect_load_error(broken_root, FileNotFoundError, r"expressions file not found")


def test_missing_annotation_png_is_named_when_read(broken_root):
    d = load_ref_ytvos(str(broken_root), "train", "t", has_masks=True)[0]
    (broken_root / "train" / "Annotations" / d["video_id"] / "00005.png").unlink()
    with pytest.raises(OSError, match="00005.png"):
        load_target_mask(d, 1)


def test_loading_a_full_size_meta_file_takes_seconds(tmp_path):
    """3,471 train videos x 2 expressions (no images): the Ref-YouTube-VOS train scale."""
    _write_meta_only_root(tmp_path, 3471)
    start = time.process_time()  # CPU time: independent of other jobs on the machine
    dicts = load_ref_ytvos(str(tmp_path), "train", "big", has_masks=True)
    elapsed = time.process_time() - start
    assert len(dicts) == 2 * 3471
    assert all(len(d["mask_annotations"]) == 36 for d in dicts[:5])
    assert elapsed < 5.0, f"loading took {elapsed:.1f}s"
