"""A2D evaluator: prec@K, overall / mean IoU and mask AP on annotated frames, by hand."""

import csv

import numpy as np
import pytest

from rvos_d2.evaluation import A2DEvaluator
from tests.fixtures.eval_data import A2D_ANNOTATED_FRAME, EVAL_A2D, model_io, target_mask

from detectron2.data import DatasetCatalog


def _evaluate(predict, score=lambda d, i: 0.9, output_dir=None):
    evaluator = A2DEvaluator(EVAL_A2D, output_dir, distributed=False)
    evaluator.reset()
    for d in DatasetCatalog.get(EVAL_A2D):
        evaluator.process(*[[x] for x in model_io(d, predict, score=score)])
    return evaluator.evaluate()["a2d"]


def _only_annotated_frame(predict):
    """`predict` on the annotated frame, an all-foreground mask on the others (never scored)."""

    def wrapped(d, frame):
        if frame != A2D_ANNOTATED_FRAME:
            return np.ones((d["height"], d["width"]), bool)
        return predict(d, frame)

    return wrapped


def test_perfect_predictions(eval_root):
    result = _evaluate(_only_annotated_frame(target_mask))
    assert result == {
        "prec@0.5": 1.0,
        "prec@0.6": 1.0,
        "prec@0.7": 1.0,
        "prec@0.8": 1.0,
        "prec@0.9": 1.0,
        "overall_IoU": 1.0,
        "mean_IoU": 1.0,
        "mAP": 1.0,
        "AP50": 1.0,
        "AP75": 1.0,
    }


def test_disjoint_predictions(eval_root):
    result = _evaluate(lambda d, f: ~target_mask(d, f))
    for key, value in result.items():
        assert value == 0.0, key


def test_mixed_predictions_by_hand(eval_root, tmp_path):
    # a0 perfect; a1 and a2 empty. Per-sample IoU (1, 0, 0).
    def predict(d, frame):
        if d["video_id"] == "a0":
            return target_mask(d, frame)
        return np.zeros((d["height"], d["width"]), bool)

    dicts = DatasetCatalog.get(EVAL_A2D)
    areas = {d["video_id"]: target_mask(d, A2D_ANNOTATED_FRAME).sum() for d in dicts}
    # Perfect sample ranked first: precision 1 up to recall 1/3, i.e. 34 of COCO's 101 points.
    first = _evaluate(predict, score=lambda d, i: 0.9 if d["video_id"] == "a0" else 0.1)
    assert first["prec@0.5"] == pytest.approx(1 / 3)
    assert first["mean_IoU"] == pytest.approx(1 / 3)
    assert first["overall_IoU"] == pytest.approx(areas["a0"] / sum(areas.values()))
    assert first["mAP"] == pytest.approx(34 / 101)
    # Ranked last, behind two false positives: precision 1/3 there.
    last = _evaluate(
        predict,
        score=lambda d, i: 0.1 if d["video_id"] == "a0" else 0.9,
        output_dir=str(tmp_path),
    )
    assert last["mAP"] == pytest.approx(34 / 101 / 3)
    with open(tmp_path / f"{EVAL_A2D}_per_frame.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["video_id"], r["frame"], float(r["IoU"])) for r in rows] == [
        ("a0", "00010", 1.0),
        ("a1", "00010", 0.0),
        ("a2", "00010", 0.0),
    ]


def test_scores_are_required(eval_root):
    d = DatasetCatalog.get(EVAL_A2D)[0]
    model_input, output = model_io(d)
    del output["scores"]
    evaluator = A2DEvaluator(EVAL_A2D, distributed=False)
    with pytest.raises(ValueError, match="scores"):
        evaluator.process([model_input], [output])


def test_missing_annotated_frame_is_an_error(eval_root):
    d = DatasetCatalog.get(EVAL_A2D)[0]
    model_input, output = model_io(d, frame_ids=[0, 1, 3])
    evaluator = A2DEvaluator(EVAL_A2D, distributed=False)
    with pytest.raises(ValueError, match=r"no prediction for frames \[2\]"):
        evaluator.process([model_input], [output])
