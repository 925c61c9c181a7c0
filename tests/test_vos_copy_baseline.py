"""tools/vos_copy_baseline.py: each object's reference mask repeated, scored by VOSEvaluator."""

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import rvos_d2  # noqa: F401  (shims and registrations)

from detectron2.data import DatasetCatalog

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def baseline():
    path = ROOT / "tools" / "vos_copy_baseline.py"
    spec = importlib.util.spec_from_file_location("vos_copy_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["vos_copy_baseline"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("vos_copy_baseline")


@pytest.fixture
def vos_env(vos_root, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(vos_root.root))
    return vos_root


def _box_iou(a, b) -> float:
    (ay0, ay1, ax0, ax1), (by0, by1, bx0, bx1) = a, b
    inter = max(0, min(ay1, by1) - max(ay0, by0)) * max(0, min(ax1, bx1) - max(ax0, bx0))
    return inter / ((ay1 - ay0) * (ax1 - ax0) + (by1 - by0) * (bx1 - bx0) - inter)


def test_the_reference_mask_is_repeated_from_its_frame_on(vos_env, baseline):
    d = {v["video_id"]: v for v in DatasetCatalog.get("ytvos2019_vos_train")}["t_a"]
    out = baseline.copy_prediction(d)
    truth = vos_env.id_maps[("train", "t_a")]
    assert out["obj_ids"] == [1, 2] and tuple(out["pred_masks"].shape) == (5, 2, *truth.shape[1:])
    probs = out["pred_masks"].numpy()
    for t in range(5):
        np.testing.assert_array_equal(probs[t, 0], truth[0] == 1)
    assert not probs[:2, 1].any()  # object 2 first appears in frame 2
    for t in range(2, 5):
        np.testing.assert_array_equal(probs[t, 1], truth[2] == 2)


def test_scores_equal_the_overlap_of_the_still_box_with_the_moving_one(vos_env, baseline, tmp_path):
    summary = baseline.evaluate_copy("ytvos2019_vos_train", str(tmp_path))
    with open(tmp_path / "ytvos2019_vos_train_per_object.csv") as f:
        rows = {(r["video_id"], int(r["obj_id"])): r for r in csv.DictReader(f)}
    # t_b object 3 slides right one column per frame; frames 1 and 2 are scored
    start, later = (0, 5, 0, 5), [(0, 5, 1, 6), (0, 5, 2, 7)]
    expected = np.mean([_box_iou(start, box) for box in later])
    assert float(rows[("t_b", 3)]["J"]) == pytest.approx(expected, abs=1e-6)
    assert 0.0 < summary["J"] < 1.0 and 0.0 <= summary["JF"] <= 1.0


def test_a_split_without_masks_is_refused(vos_env, baseline, tmp_path):
    with pytest.raises(baseline.InputError, match="no masks"):
        baseline.evaluate_copy("ytvos2019_vos_valid", str(tmp_path))
