"""A2D-Sentences and JHMDB-Sentences loaders on fixtures written in the released formats."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from rvos_d2.data.datasets.a2d_jhmdb import read_a2d_masks, read_jhmdb_mask
from rvos_d2.data.mask_io import MASK_READER_REGISTRY, load_target_mask
from tests.fixtures.real_formats import (
    A2D_SIZE,
    A2D_VIDEOS,
    JHMDB_SIZE,
    JHMDB_VIDEOS,
    write_a2d_h5,
    write_a2d_release,
    write_jhmdb_release,
)

from detectron2.data import DatasetCatalog, MetadataCatalog

CONTRACT_KEYS = {
    "dataset_name", "video_id", "exp_id", "expression", "file_names", "frame_names", "height",
    "width", "length", "has_masks", "obj_ids", "mask_annotations",
}  # fmt: skip


def _load(monkeypatch, datasets_root: Path, name: str) -> list[dict]:
    monkeypatch.setenv("DETECTRON2_DATASETS", str(datasets_root))
    return DatasetCatalog.get(name)


def _check_contract(d: dict, name: str, size: tuple[int, int]) -> None:
    assert CONTRACT_KEYS <= set(d)
    assert d["dataset_name"] == name and d["has_masks"] is True
    assert (d["height"], d["width"]) == size
    assert d["length"] == len(d["file_names"]) == len(d["frame_names"])
    assert d["length"] == len(d["mask_annotations"])
    assert all(Path(f).is_file() for f in d["file_names"])
    assert [Path(f).stem for f in d["file_names"]] == d["frame_names"]


def test_registered_without_reading(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    for name in ("a2d_sentences_train", "a2d_sentences_test", "jhmdb_sentences"):
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).evaluator_type == "a2d"
    assert {"a2d_h5", "jhmdb_mat"} <= set(MASK_READER_REGISTRY.names())


def test_a2d_train_dicts_and_masks(a2d_release, monkeypatch):
    dicts = _load(monkeypatch, a2d_release.root.parent, "a2d_sentences_train")
    # vidB is in a2d_missed_videos.txt, the "1 (copy)" row is a known duplicate of the release
    assert [(d["video_id"], d["exp_id"], d["obj_ids"]) for d in dicts] == [
        ("vidA", "1_0", [1]),
        ("vidA", "2_0", [2]),
        ("vidA", "1_1", [1]),
    ]
    assert dicts[0]["expression"] == "man, walking on the left"
    assert dicts[2]["expression"] == "a man in a red shirt"
    annotated = A2D_VIDEOS["vidA"][3]
    for d in dicts:
        _check_contract(d, "a2d_sentences_train", A2D_SIZE)
        instance = d["obj_ids"][0]
        for i, name in enumerate(d["frame_names"]):
            number = int(name)
            if instance in annotated.get(number, {}):
                mask = load_target_mask(d, i)
                assert mask.shape == A2D_SIZE and mask.dtype == bool
                np.testing.assert_array_equal(mask, a2d_release.masks[("vidA", instance, number)])
            else:  # frame without annotation, or the instance is not in that frame's annotation
                assert d["mask_annotations"][i] is None
                assert load_target_mask(d, i) is None
    assert sum(a is not None for a in dicts[1]["mask_annotations"]) == 1


def test_a2d_test_split_reads_jpg_frames(a2d_release, monkeypatch):
    (d,) = _load(monkeypatch, a2d_release.root.parent, "a2d_sentences_test")
    _check_contract(d, "a2d_sentences_test", A2D_SIZE)
    assert (d["video_id"], d["obj_ids"], d["expression"]) == ("vidC", [3], "ball rolling")
    assert all(f.endswith(".jpg") for f in d["file_names"])
    assert [a is not None for a in d["mask_annotations"]] == [False, False, True, False]
    np.testing.assert_array_equal(load_target_mask(d, 2), a2d_release.masks[("vidC", 3, 3)])


def test_a2d_h5_orientation_and_union(tmp_path):
    masks = {
        4: np.eye(7, 5, dtype=bool),
        9: np.zeros((7, 5), dtype=bool),
    }
    masks[9][6, 0] = True
    path = tmp_path / "00001.h5"
    write_a2d_h5(path, masks, ids_as_row=False)
    with h5py.File(path, "r") as f:
        assert f["reMask"].shape == (2, 5, 7)  # stored W x H, as MATLAB writes it
    np.testing.assert_array_equal(read_a2d_masks(path, [4]), masks[4])
    np.testing.assert_array_equal(read_a2d_masks(path, [4, 9]), masks[4] | masks[9])
    with pytest.raises(ValueError, match=r"00001\.h5 lacks instance \[5\]"):
        read_a2d_masks(path, [5])


def _a2d_copy(tmp_path: Path, **kwargs) -> Path:
    return write_a2d_release(tmp_path / "a2d_sentences", **kwargs)


def test_a2d_errors_name_the_problem(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="A2D-Sentences root"):
        _load(monkeypatch, tmp_path, "a2d_sentences_train")

    _a2d_copy(tmp_path, extract_frames=False)
    hint = r"vidA are not extracted.*clips320H/vidA\.mp4.*ffmpeg"
    with pytest.raises(FileNotFoundError, match=hint):
        _load(monkeypatch, tmp_path, "a2d_sentences_train")


def test_a2d_missing_frame_file(tmp_path, monkeypatch):
    root = _a2d_copy(tmp_path).root
    (root / "Release" / "JPEGImages" / "vidA" / "00004.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"vidA: annotated frames \[4\] have no frame file"):
        _load(monkeypatch, tmp_path, "a2d_sentences_train")


def test_a2d_malformed_annotation(tmp_path, monkeypatch):
    root = _a2d_copy(tmp_path).root
    bad = root / "text_annotations" / "a2d_annotation_with_instances" / "vidA" / "00002.h5"
    with h5py.File(bad, "w") as f:
        f["reMask"] = np.zeros((5, 7))
    with pytest.raises(ValueError, match=r"malformed A2D annotation .*vidA/00002\.h5"):
        _load(monkeypatch, tmp_path, "a2d_sentences_train")
    bad.unlink()
    with pytest.raises(ValueError, match=r"video vidA has no instance 2 in any annotation"):
        _load(monkeypatch, tmp_path, "a2d_sentences_train")


@pytest.mark.parametrize(
    "row, message",
    [
        ("vidA,7,a ghost", r"a2d_annotation.txt:8: video vidA has no instance 7"),
        ("vidA,2,   ", r"a2d_annotation.txt:8 \(video vidA\): empty referring expression"),
        ("vidA,2", r"a2d_annotation.txt:8: expected 3 comma-separated fields"),
        ("vidA,x,words", r"a2d_annotation.txt:8: instance_id must be an integer"),
        ("vidZ,1,unknown video", r"videos not in videoset.csv: \['vidZ'\]"),
    ],
)
def test_a2d_bad_sentence_rows(tmp_path, monkeypatch, row, message):
    root = _a2d_copy(tmp_path).root
    with open(root / "text_annotations" / "a2d_annotation.txt", "a") as f:
        f.write(row + "\n")
    with pytest.raises(ValueError, match=message):
        _load(monkeypatch, tmp_path, "a2d_sentences_train")


def test_jhmdb_dicts_and_masks(jhmdb_release, monkeypatch):
    dicts = _load(monkeypatch, jhmdb_release.root.parent, "jhmdb_sentences")
    assert [(d["video_id"], d["exp_id"], d["action"]) for d in dicts] == [
        ("vidJ1", "0", "brush_hair"),
        ("vidJ2", "0", "catch"),
    ]
    assert dicts[1]["expression"] == "a boy, catching a ball"
    for d in dicts:
        _check_contract(d, "jhmdb_sentences", JHMDB_SIZE)
        _, count, num_masks = JHMDB_VIDEOS[d["video_id"]]
        assert d["length"] == count and d["obj_ids"] == [1]
        for t in range(count):
            if t < num_masks:
                mask = load_target_mask(d, t)
                np.testing.assert_array_equal(mask, jhmdb_release.masks[(d["video_id"], t)])
            else:  # frames past the puppet mask are not annotated
                assert d["mask_annotations"][t] is None


def test_jhmdb_mat_orientation(tmp_path):
    part_mask = np.zeros((6, 4, 2), dtype=np.uint8)
    part_mask[5, 0, 1] = 1
    path = tmp_path / "puppet_mask.mat"
    scipy.io.savemat(str(path), {"part_mask": part_mask})
    mask = read_jhmdb_mask(path, 1)
    assert mask.shape == (6, 4) and mask[5, 0] and mask.sum() == 1
    assert not read_jhmdb_mask(path, 0).any()
    with pytest.raises(ValueError, match="has 2 frames, frame 2 asked"):
        read_jhmdb_mask(path, 2)


def test_jhmdb_errors_name_the_problem(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="JHMDB-Sentences root"):
        _load(monkeypatch, tmp_path, "jhmdb_sentences")
    root = write_jhmdb_release(tmp_path / "jhmdb_sentences").root
    mat = root / "puppet_mask" / "catch" / "vidJ2" / "puppet_mask.mat"
    scipy.io.savemat(str(mat), {"part_mask": np.zeros((3, 3))})
    with pytest.raises(ValueError, match=r"malformed JHMDB puppet mask .*vidJ2/puppet_mask\.mat"):
        _load(monkeypatch, tmp_path, "jhmdb_sentences")
    mat.unlink()
    with pytest.raises(FileNotFoundError, match=r"JHMDB puppet mask not found: .*vidJ2"):
        _load(monkeypatch, tmp_path, "jhmdb_sentences")
    scipy.io.savemat(str(mat), {"part_mask": np.zeros((*JHMDB_SIZE, 2))})
    with open(root / "jhmdb_annotation.txt", "a") as f:
        f.write("vidJ9,someone\n")
    with pytest.raises(FileNotFoundError, match=r"no frame folder .*vidJ9"):
        _load(monkeypatch, tmp_path, "jhmdb_sentences")
