"""Temporal stability of the RVOS evaluator (SOC's Fig. 4): per-pair variance over frames of the
per-frame IoU and J&F, averaged over pairs."""

import numpy as np
import pytest

from rvos_d2.evaluation.rvos_evaluator import RVOSEvaluator, summarize
from tests.fixtures.eval_data import EVAL_RVOS, model_io, target_mask

from detectron2.data import DatasetCatalog


def _record(j, f):
    return {
        "video_id": "v",
        "exp_id": "0",
        "group": (),
        "J": j,
        "F": f,
        "I": [1] * len(j),
        "U": [1] * len(j),
    }


def test_variances_average_over_pairs_by_hand():
    records = [_record([1.0, 0.5], [1.0, 0.0]), _record([0.2, 0.2, 0.2], [0.4, 0.6, 0.5])]
    result = summarize(records)
    assert result["IoU_variance"] == pytest.approx((0.0625 + 0.0) / 2)
    jf_second = np.var([0.3, 0.4, 0.35])
    assert result["JF_variance"] == pytest.approx((np.var([1.0, 0.25]) + jf_second) / 2)


def test_one_unsteady_pair_of_the_evaluator(eval_root):
    """v2 expression 1 predicted empty: J = F = 1 on its frame where the target is absent, 0 on
    its other 4 annotated frames; every other pair is perfect (variance 0)."""

    def predict(d, frame):
        if (d["video_id"], d["exp_id"]) == ("v2", "1"):
            return np.zeros((d["height"], d["width"]), bool)
        return target_mask(d, frame)

    evaluator = RVOSEvaluator(EVAL_RVOS, distributed=False)
    evaluator.reset()
    dicts = DatasetCatalog.get(EVAL_RVOS)
    for d in dicts:
        evaluator.process(*[[x] for x in model_io(d, predict)])
    result = evaluator.evaluate()["rvos"]
    expected = np.var([0, 0, 0, 1, 0]) / len(dicts)
    assert result["IoU_variance"] == pytest.approx(expected)
    assert result["JF_variance"] == pytest.approx(expected)
