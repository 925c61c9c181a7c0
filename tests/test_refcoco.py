"""RefCOCO-family loader on a fixture written as the refer toolkit ships it."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from rvos_d2.data.datasets.refcoco import REFCOCO_SPLITS, annotation_rle, load_refs
from rvos_d2.data.mask_io import load_target_mask
from tests.fixtures.real_formats import COCO_IMAGES, write_refcoco_release, write_refs

from detectron2.data import DatasetCatalog, MetadataCatalog


def _load(monkeypatch, root: Path, name: str) -> list[dict]:
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    return DatasetCatalog.get(name)


def test_every_split_is_registered():
    for (dataset, split_by), splits in REFCOCO_SPLITS.items():
        for split in splits:
            name = f"{dataset}_{split_by}_{split}"
            assert name in DatasetCatalog.list()
            assert MetadataCatalog.get(name).evaluator_type == "rvos"
    assert "refcoco+_unc_testB" in DatasetCatalog.list()
    assert "refcocog_umd_test" in DatasetCatalog.list()


def test_one_dict_per_sentence_as_one_frame_video(refcoco_release, monkeypatch):
    dicts = _load(monkeypatch, refcoco_release.root, "refcoco_unc_train")
    assert [d["expression"] for d in dicts] == ["left man", "man on the left"]
    assert len({d["exp_id"] for d in dicts}) == 2
    for d in dicts:
        assert d["dataset_name"] == "refcoco_unc_train"
        assert d["is_image"] is True and d["length"] == 1 and d["has_masks"] is True
        assert d["video_id"] == "1" and d["ref_id"] == 1 and d["obj_ids"] == [101]
        assert (d["height"], d["width"]) == COCO_IMAGES[1]
        (file_name,) = d["file_names"]
        assert Path(file_name).is_file()
        assert Path(file_name).name == "COCO_train2014_000000000001.jpg"
        assert d["frame_names"] == ["COCO_train2014_000000000001"]
        assert d["mask_annotations"][0]["type"] == "rle"
        assert isinstance(d["mask_annotations"][0]["rle"]["counts"], str)  # json-friendly
        np.testing.assert_array_equal(load_target_mask(d, 0), refcoco_release.masks[101])


@pytest.mark.parametrize(
    "name, ann_ids",
    [
        ("refcoco_unc_val", [102]),
        ("refcoco_unc_testA", [201]),
        ("refcoco_unc_testB", [201]),
        ("refcocog_umd_train", [101]),
        ("refcocog_umd_test", [201]),
        ("refcocog_umd_val", []),
    ],
)
def test_splits_select_their_refs(refcoco_release, monkeypatch, name, ann_ids):
    dicts = _load(monkeypatch, refcoco_release.root, name)
    assert [d["obj_ids"][0] for d in dicts] == ann_ids
    for d in dicts:  # 102 is two polygons: the target is their union
        np.testing.assert_array_equal(
            load_target_mask(d, 0), refcoco_release.masks[d["obj_ids"][0]]
        )


def _run_lengths(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: column-major runs, starting with a (maybe empty) run of zeros."""
    flat = mask.flatten(order="F").astype(int)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def test_annotation_rle_accepts_coco_segmentations():
    mask = np.zeros((6, 9), dtype=bool)
    mask[1:4, 2:7] = True
    polygon = {"id": 1, "segmentation": [[2, 1, 7, 1, 7, 4, 2, 4]]}
    compressed = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    uncompressed = {"size": [6, 9], "counts": _run_lengths(mask)}
    for seg in (polygon["segmentation"], compressed, uncompressed):
        rle = annotation_rle({"id": 1, "segmentation": seg}, 6, 9, "test")
        decoded = mask_utils.decode(rle).astype(bool)
        assert decoded.shape == (6, 9)
        assert decoded.sum() == 15 and decoded[1:4, 2:7].all()
    with pytest.raises(ValueError, match="test: malformed segmentation of annotation 7"):
        annotation_rle({"id": 7, "segmentation": [[1, 2, 3, 4]]}, 6, 9, "test")


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refs_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "x": _RunsCode(marker)}], protocol=2))
    with pytest.raises(ValueError, match=r"cannot read refs file .*refusing to load .*system"):
        load_refs(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps([{"ids": {1, 2}, "t": (1, "a")}], protocol=2))
    assert load_refs(path) == [{"ids": {1, 2}, "t": (1, "a")}]


def _edited_release(tmp_path: Path, edit) -> Path:
    root = write_refcoco_release(tmp_path).root
    edit(root / "coco" / "refcoco")
    return root


def _edit_instances(key: str, change):
    def edit(folder: Path) -> None:
        data = json.loads((folder / "instances.json").read_text())
        change(data[key])
        (folder / "instances.json").write_text(json.dumps(data))

    return edit


@pytest.mark.parametrize(
    "edit, error, message",
    [
        (
            lambda d: write_refs(d / "refs(unc).p", [(9, 101, "train", ["  "])]),
            ValueError,
            r"refs\(unc\)\.p ref 9 sentence 1001: empty referring expression",
        ),
        (
            lambda d: write_refs(d / "refs(unc).p", [(9, 101, "train", [])]),
            ValueError,
            r"ref 9: no sentences",
        ),
        (
            _edit_instances("annotations", lambda anns: anns.pop(0)),
            ValueError,
            r"ref 1: annotation 101 is not in .*instances\.json",
        ),
        (
            _edit_instances("annotations", lambda anns: anns[0].update(segmentation=[[1, 2]])),
            ValueError,
            r"instances\.json: malformed segmentation of annotation 101",
        ),
        (
            lambda d: (d / "refs(unc).p").write_bytes(b"not a pickle"),
            ValueError,
            r"cannot read refs file .*refs\(unc\)\.p",
        ),
        (
            lambda d: (d.parent / "train2014" / "COCO_train2014_000000000001.jpg").unlink(),
            FileNotFoundError,
            r"COCO image of .*ref 1 not found: .*COCO_train2014_000000000001\.jpg",
        ),
        (
            lambda d: (d / "instances.json").unlink(),
            FileNotFoundError,
            r"refcoco instances not found: .*instances\.json",
        ),
    ],
)
def test_bad_input_names_the_file(tmp_path, monkeypatch, edit, error, message):
    root = _edited_release(tmp_path, edit)
    with pytest.raises(error, match=message):
        _load(monkeypatch, root, "refcoco_unc_train")


def test_missing_roots_name_the_folder(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="COCO root for RefCOCO"):
        _load(monkeypatch, tmp_path, "refcoco_unc_train")
    write_refcoco_release(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"refcoco\+ annotations not found"):
        _load(monkeypatch, tmp_path, "refcoco+_unc_val")
