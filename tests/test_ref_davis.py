"""Ref-DAVIS17: expression files, the conversion tool, and the registered converted splits."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rvos_d2.data.datasets.ref_ytvos import load_ref_ytvos
from rvos_d2.data.mask_io import load_target_mask
from rvos_d2.data.prepare.davis import read_expression_file
from tests.fixtures.real_formats import DAVIS_FRAMES, DAVIS_SIZE, DAVIS_VIDEOS, write_davis_release

from detectron2.data import DatasetCatalog, MetadataCatalog

TOOL = Path(__file__).resolve().parents[1] / "tools" / "convert_davis_to_ytvos.py"


def _convert(argv: list[str]) -> dict[str, int]:
    spec = importlib.util.spec_from_file_location("convert_davis_to_ytvos", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.main(argv)


@pytest.fixture(scope="session")
def converted_davis(davis_release, tmp_path_factory) -> Path:
    """The fixture release converted by the tool; returns the datasets root above `ref-davis`."""
    root = tmp_path_factory.mktemp("davis_converted")
    out = root / "ref-davis"
    _convert(["--davis-root", str(davis_release.root), "--output", str(out)])
    return root


def test_read_expression_file_handles_release_quirks(tmp_path):
    path = tmp_path / "Davis17_annot2.txt"
    path.write_bytes('clasic-car 2 "person near café"\n\nbear 1  "a  bear"  \n'.encode("latin-1"))
    assert read_expression_file(path) == [
        ("classic-car", 2, "person near café"),  # misspelt video name of the release
        ("bear", 1, "a bear"),
    ]
    path.write_text('bear "no object id"\n')
    with pytest.raises(ValueError, match=r"Davis17_annot2.txt:1: expected `video obj_id"):
        read_expression_file(path)
    path.write_text('bear 1 "ok"\nbear 2 ""\n')
    with pytest.raises(ValueError, match=r"Davis17_annot2.txt:2: empty referring expression"):
        read_expression_file(path)


def test_conversion_writes_ytvos_layout(converted_davis, davis_release):
    out = converted_davis / "ref-davis"
    for video, (image_set, _) in DAVIS_VIDEOS.items():
        split = "train" if image_set == "train" else "valid"
        frames = out / split / "JPEGImages" / video
        assert frames.is_symlink()
        assert sorted(p.stem for p in frames.iterdir()) == DAVIS_FRAMES
        assert (out / split / "Annotations" / video / "00000.png").is_file()
    exps = json.loads((out / "meta_expressions" / "valid" / "meta_expressions.json").read_text())
    swan = exps["videos"]["blackswan"]
    assert swan["frames"] == DAVIS_FRAMES
    assert swan["expressions"]["2_a2_first"] == {
        "exp": "stone",
        "obj_id": "2",
        "annotator": 2,
        "expression_type": "first_frame",
    }
    meta = json.loads((out / "valid" / "meta.json").read_text())["videos"]["blackswan"]
    assert meta["objects"]["2"]["frames"] == ["00002"]  # frames where the object appears
    assert (meta["height"], meta["width"]) == DAVIS_SIZE
    assert "notinsplit" not in json.dumps(exps)


def test_converted_output_loads_with_ytvos_loader(converted_davis, davis_release):
    dicts = load_ref_ytvos(str(converted_davis / "ref-davis"), "train", "x", has_masks=True)
    assert len(dicts) == 3 * 4  # 3 objects x 2 annotators x 2 expression types
    for d in dicts:
        for t in range(d["length"]):
            mask = load_target_mask({**d, "height": DAVIS_SIZE[0], "width": DAVIS_SIZE[1]}, t)
            key = (d["video_id"], d["obj_ids"][0], t)
            expected = davis_release.masks.get(key, np.zeros(DAVIS_SIZE, dtype=bool))
            np.testing.assert_array_equal(mask, expected)


def test_registered_splits(converted_davis, davis_release, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(converted_davis))
    train = DatasetCatalog.get("ref_davis_train")
    valid = DatasetCatalog.get("ref_davis_valid")
    assert len(train) == 12 and len(valid) == 8
    meta = MetadataCatalog.get("ref_davis_valid")
    assert meta.evaluator_type == "rvos"
    assert tuple(meta.eval_group_by) == ("annotator", "expression_type")
    assert tuple(meta.merge_objects_by) == ("annotator", "expression_type")
    groups = {(d["annotator"], d["expression_type"]) for d in valid}
    assert groups == {(a, k) for a in (1, 2) for k in ("first_frame", "full_video")}
    car = {d["exp_id"]: d for d in train if d["video_id"] == "classic-car"}
    assert car["2_a2_first"]["expression"] == "person near café"
    assert car["2_a1_full"]["expression"] == "man walking to the car"
    for d in train + valid:
        assert d["dataset_name"] in ("ref_davis_train", "ref_davis_valid")
        tag = {"first_frame": "first", "full_video": "full"}[d["expression_type"]]
        assert d["exp_id"] == f"{d['obj_ids'][0]}_a{d['annotator']}_{tag}"
        assert (d["height"], d["width"]) == DAVIS_SIZE
        assert d["has_masks"] and d["length"] == len(DAVIS_FRAMES)
        assert all(Path(f).is_file() for f in d["file_names"])
    d = car["2_a1_first"]
    expected = davis_release.masks[("classic-car", 2, 0)]
    np.testing.assert_array_equal(load_target_mask(d, 0), expected)
    assert not load_target_mask(d, 1).any()  # object 2 is absent from frame 1


def test_copy_mode_and_rerun(davis_release, tmp_path):
    out = tmp_path / "ref-davis"
    args = ["--davis-root", str(davis_release.root), "--output", str(out)]
    counts = _convert([*args, "--copy"])
    assert counts == {"train": 12, "valid": 8}
    assert not (out / "train" / "JPEGImages" / "bear").is_symlink()
    linked = tmp_path / "linked"
    assert _convert(["--davis-root", str(davis_release.root), "--output", str(linked)]) == counts
    assert _convert(["--davis-root", str(davis_release.root), "--output", str(linked)]) == counts
    with pytest.raises(FileExistsError, match=r"train/JPEGImages/bear exists"):
        _convert([*args])  # copied folders are not silently replaced by links


def _broken_release(tmp_path: Path) -> Path:
    return write_davis_release(tmp_path / "raw").root


def test_conversion_errors_name_the_problem(tmp_path):
    root = _broken_release(tmp_path)
    with open(root / "davis_text_annotations" / "Davis17_annot1.txt", "a") as f:
        f.write('bear 5 "a ghost"\n')
    message = r"Davis17_annot1.txt: video bear expression 'a ghost' refers to object 5"
    with pytest.raises(ValueError, match=message):
        _convert(["--davis-root", str(root), "--output", str(tmp_path / "a")])

    root = _broken_release(tmp_path / "2")
    (root / "DAVIS" / "Annotations" / "480p" / "bear" / "00001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"DAVIS annotation of video bear not found: .*"):
        _convert(["--davis-root", str(root), "--output", str(tmp_path / "b")])

    shutil.rmtree(root / "davis_text_annotations")
    with pytest.raises(FileNotFoundError, match="Ref-DAVIS expressions not found"):
        _convert(["--davis-root", str(root), "--output", str(tmp_path / "c")])


def test_unconverted_root_is_reported(davis_release, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(davis_release.root.parent))
    with pytest.raises(FileNotFoundError, match=r"meta_expressions/train/meta_expressions.json"):
        DatasetCatalog.get("ref_davis_train")
