"""VOSEvaluator: label maps, DAVIS-protocol J&F per object, YouTube-VOS submission files."""

import csv
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import rvos_d2  # noqa: F401  (shims and registrations)
from rvos_d2.engine.launch import launch
from rvos_d2.evaluation import VOSEvaluator, build_evaluator, metrics
from rvos_d2.evaluation.vos_evaluator import label_maps
from tests.fixtures.vos_formats import VOS_PALETTE, VOS_SIZE, frame_names

from detectron2.data import DatasetCatalog
from detectron2.utils import comm


@pytest.fixture
def vos_env(vos_root, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(vos_root.root))
    return vos_root


def _io(d, ids, obj_ids=None):
    """(model input, output) whose probabilities are the one-hot objects of `ids` (N x H x W)."""
    obj_ids = d["obj_ids"] if obj_ids is None else obj_ids
    probs = np.stack([np.stack([m == k for k in obj_ids]) for m in ids]).astype(np.float32)
    model_input = {
        "video_id": d["video_id"],
        "dataset_name": d["dataset_name"],
        "height": ids.shape[1],
        "width": ids.shape[2],
        "frame_ids": list(range(len(ids))),
    }
    return model_input, {"pred_masks": torch.from_numpy(probs), "obj_ids": list(obj_ids)}


def _evaluate(name, predict, output_dir=None):
    """Runs the evaluator over every video; predict(dict) -> N x H x W id maps."""
    evaluator = VOSEvaluator(name, output_dir, distributed=False)
    evaluator.reset()
    for d in DatasetCatalog.get(name):
        evaluator.process(*[[x] for x in _io(d, predict(d))])
    return evaluator.evaluate()


def test_label_map_is_the_argmax_with_background():
    d = {"video_id": "x", "length": 2, "obj_ids": [1, 4], "first_frames": [0, 1]}
    p4 = [[0.6, 0.3, 0.2], [0.5, 0.1, 0.45]]  # rows of the output: object 4, then object 1
    p1 = [[0.3, 0.6, 0.2], [0.5, 0.1, 0.45]]
    probs = torch.tensor([[p4, p1], [p4, p1]])
    labels = label_maps(probs, [4, 1], d, (2, 3))
    # frame 0: object 4 is not given yet, so only object 1 competes with 1 - p1
    np.testing.assert_array_equal(labels[0], [[0, 1, 0], [0, 0, 0]])
    # frame 1: background = 1 - p4 - p1; ties go to the background, then to the first row
    np.testing.assert_array_equal(labels[1], [[4, 1, 0], [4, 0, 4]])
    half = label_maps(torch.full((2, 1, 2, 3), 0.5), [1], d, (2, 3))
    assert not half.any()  # one object at exactly 0.5 is background, as the 0.5 threshold
    with pytest.raises(ValueError, match="does not have"):
        label_maps(probs, [4, 9], d, (2, 3))
    with pytest.raises(ValueError, match="expected"):
        label_maps(probs[:1], [4, 1], d, (2, 3))


def test_perfect_predictions_score_one(vos_env):
    for name, split in (("davis17_vos_valid", "val"), ("ytvos2019_vos_train", "train")):
        result = _evaluate(name, lambda d, s=split: vos_env.id_maps[(s, d["video_id"])])
        assert list(result) == ["vos"]
        assert result["vos"] == {"J": 1.0, "F": 1.0, "JF": 1.0, "J_recall": 1.0, "F_recall": 1.0}


def test_first_and_last_frames_are_not_scored(vos_env):
    truth = vos_env.id_maps[("val", "dv-val")]

    def wrong_ends(d):
        ids = truth.copy()
        ids[0], ids[-1] = 0, 0
        return ids

    assert _evaluate("davis17_vos_valid", wrong_ends)["vos"]["JF"] == 1.0

    def wrong_middle(d):
        ids = truth.copy()
        ids[1] = 0
        return ids

    assert _evaluate("davis17_vos_valid", wrong_middle)["vos"]["J"] == pytest.approx(2 / 3)


def test_partial_overlap_gives_the_expected_j(vos_env, tmp_path):
    truth = vos_env.id_maps[("val", "dv-val")]

    def half_of_object_1(d):  # object 1 is rows 3-8, columns 3-10 in frame 2: keep columns 3-6
        ids = truth.copy()
        ids[2, 3:9, 7:11] = 0
        return ids

    result = _evaluate("davis17_vos_valid", half_of_object_1, str(tmp_path))["vos"]
    # object 1: J = 1, 0.5, 1 on frames 1-3; object 2: J = 1 on frames 1-3
    assert result["J"] == pytest.approx(((1 + 0.5 + 1) / 3 + 1) / 2)
    assert result["J_recall"] == pytest.approx((2 / 3 + 1) / 2)  # J = 0.5 is not above 0.5
    f2 = metrics.contour_accuracy(half_of_object_1(None)[2] == 1, truth[2] == 1)
    assert 0 < f2 < 1
    assert result["F"] == pytest.approx(((2 + f2) / 3 + 1) / 2)
    assert result["JF"] == pytest.approx((result["J"] + result["F"]) / 2)
    with open(tmp_path / "davis17_vos_valid_per_object.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["video_id"], r["obj_id"], r["frames"]) for r in rows] == [
        ("dv-val", "1", "3"),
        ("dv-val", "2", "3"),
    ]
    assert float(rows[0]["J"]) == pytest.approx(5 / 6)


def test_objects_appearing_later_are_scored_after_their_first_frame(vos_env):
    # object 2 of t_a first appears in frame 2 of 5: frame 3 is its only scored frame
    def object_2_wrong_on_frame_2(d):
        ids = vos_env.id_maps[("train", d["video_id"])].copy()
        if d["video_id"] == "t_a":
            ids[2][ids[2] == 2] = 0
        return ids

    assert _evaluate("ytvos2019_vos_train", object_2_wrong_on_frame_2)["vos"]["JF"] == 1.0

    # the output has no row for object 2 of t_a: it is never predicted
    evaluator = VOSEvaluator("ytvos2019_vos_train", distributed=False)
    for d in DatasetCatalog.get("ytvos2019_vos_train"):
        ids = vos_env.id_maps[("train", d["video_id"])]
        objs = [1] if d["video_id"] == "t_a" else None
        evaluator.process(*[[x] for x in _io(d, ids, objs)])
    # objects: t_a/1 = 1, t_a/2 = 0 (frame 3: J = 0), t_b/3, 5, 7 = 1
    assert evaluator.evaluate()["vos"]["J"] == pytest.approx(4 / 5)


def test_submission_holds_palette_label_maps(vos_env, tmp_path):
    truth = vos_env.id_maps[("valid", "v_a")]
    assert _evaluate("ytvos2019_vos_valid", lambda d: truth, str(tmp_path)) == {}
    names = [f"Annotations/v_a/{n}.png" for n in frame_names(4, 5)]
    with zipfile.ZipFile(tmp_path / "submission.zip") as archive:
        assert sorted(archive.namelist()) == names
    for t, rel in enumerate(names):
        with Image.open(tmp_path / rel) as img:
            assert img.mode == "P" and img.getpalette()[: len(VOS_PALETTE)] == VOS_PALETTE
            np.testing.assert_array_equal(np.asarray(img), truth[t])


def test_all_frames_submission_writes_only_the_split_frames(vos_env, tmp_path):
    def boxes(d):
        ids = np.zeros((d["length"], *VOS_SIZE), np.uint8)
        ids[:, 2:8, 2:8], ids[10:, 11:17, 14:22] = 1, 4
        return ids

    _evaluate("ytvos2019_vos_valid_all_frames", boxes, str(tmp_path))
    with zipfile.ZipFile(tmp_path / "submission.zip") as archive:
        assert sorted(archive.namelist()) == [
            f"Annotations/v_a/{n}.png" for n in ("00000", "00005", "00010", "00015")
        ]
    with Image.open(tmp_path / "Annotations/v_a/00010.png") as img:
        assert set(np.unique(np.asarray(img))) == {0, 1, 4}


def test_build_evaluator_dispatches_vos(vos_env, rvos_cfg, tmp_path):
    rvos_cfg.OUTPUT_DIR = str(tmp_path)
    assert isinstance(build_evaluator(rvos_cfg, "davis17_vos_valid"), VOSEvaluator)
    with pytest.raises(ValueError, match="output directory"):
        VOSEvaluator("ytvos2019_vos_valid", None)


def test_every_frame_must_be_predicted(vos_env):
    d = DatasetCatalog.get("davis17_vos_valid")[0]
    model_input, output = _io(d, vos_env.id_maps[("val", "dv-val")])
    model_input["frame_ids"] = [0, 2, 4]
    evaluator = VOSEvaluator("davis17_vos_valid", distributed=False)
    with pytest.raises(ValueError, match="every frame"):
        evaluator.process([model_input], [output])


# --------------------------------------------------------------------------------------------
# Two processes (gloo on CPU): each rank evaluates one of the two videos.
# --------------------------------------------------------------------------------------------


def _shifted(truth):
    """A deterministic imperfect prediction: every id map shifted one column to the right."""
    return np.roll(truth, 1, axis=2)


def _distributed_worker(root, out_dir, result_file):
    import os

    os.environ["DETECTRON2_DATASETS"] = str(root)
    rank, world = comm.get_rank(), comm.get_world_size()
    evaluator = VOSEvaluator("ytvos2019_vos_train", str(out_dir), distributed=True)
    evaluator.reset()
    dicts = DatasetCatalog.get("ytvos2019_vos_train")[rank::world]
    for d in dicts:
        ids = np.stack([np.asarray(Image.open(a["file"])) for a in d["mask_annotations"]])
        evaluator.process(*[[x] for x in _io(d, _shifted(ids))])
    with open(f"{result_file}.{rank}", "wb") as f:
        pickle.dump(evaluator.evaluate(), f)


def test_records_of_two_ranks_merge_to_the_single_process_result(vos_env, monkeypatch):
    """Fast variant of the two-process test: rank 1's records reach rank 0 through the gather."""
    name = "ytvos2019_vos_train"

    def predict(d):
        return _shifted(vos_env.id_maps[("train", d["video_id"])])

    expected = _evaluate(name, predict)
    ranks = [VOSEvaluator(name, distributed=True) for _ in range(2)]
    for rank, d in enumerate(DatasetCatalog.get(name)):
        ranks[rank].process(*[[x] for x in _io(d, predict(d))])
    monkeypatch.setattr(
        "rvos_d2.evaluation.vos_evaluator.gather_records",
        lambda records, distributed: records + ranks[1]._records,
    )
    assert ranks[0].evaluate() == expected


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() == 1, reason="two workers need 0 or >= 2 GPUs")
def test_two_process_gather_equals_single_process(vos_env, tmp_path):
    expected = _evaluate(
        "ytvos2019_vos_train",
        lambda d: _shifted(vos_env.id_maps[("train", d["video_id"])]),
        str(tmp_path / "single"),
    )
    assert 0 < expected["vos"]["JF"] < 1
    result_file = tmp_path / "result"
    launch(
        _distributed_worker,
        2,
        dist_url="auto",
        args=(vos_env.root, tmp_path / "multi", str(result_file)),
    )
    with open(f"{result_file}.0", "rb") as f:
        main_result = pickle.load(f)
    with open(f"{result_file}.1", "rb") as f:
        assert pickle.load(f) == {}
    assert main_result["vos"] == pytest.approx(expected["vos"], rel=1e-12)
    csv_name = "ytvos2019_vos_train_per_object.csv"
    assert (tmp_path / "multi" / csv_name).read_text() == (
        tmp_path / "single" / csv_name
    ).read_text()
