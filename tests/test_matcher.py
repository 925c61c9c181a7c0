"""Instance-sequence Hungarian matcher: known optimal assignments."""

import pytest
import torch

from rvos_d2.modeling.matcher import MatchCostWeights, SequenceMatcher

WEIGHTS = MatchCostWeights(cls=2.0, l1=5.0, giou=2.0, dice=5.0, focal=2.0)


def _target(t=4, h=8, w=8, x0=1):
    masks = torch.zeros(t, h, w)
    masks[:, 2:6, x0 : x0 + 3] = 1
    boxes = torch.tensor([(x0 + 1.5) / w, 0.5, 3 / w, 0.5]).repeat(t, 1)
    return masks, boxes


def _random_outputs(t, n, h=8, w=8):
    torch.manual_seed(0)
    return {
        "pred_logits": torch.randn(1, t, n),
        "pred_boxes": torch.rand(1, t, n, 4) * 0.4 + 0.3,
        "pred_masks": torch.randn(1, t, n, h, w),
    }


def test_single_target_goes_to_the_best_sequence():
    t, n = 4, 5
    masks, boxes = _target(t)
    outputs = _random_outputs(t, n)
    outputs["pred_masks"][0, :, 3] = 10 * (2 * masks - 1)
    outputs["pred_boxes"][0, :, 3] = boxes
    valid = torch.ones(1, t, dtype=torch.bool)
    target = {"valid": valid, "boxes": boxes[None], "masks": masks[None]}
    ((rows, cols),) = SequenceMatcher(WEIGHTS)(outputs, [target])
    assert rows.tolist() == [3] and cols.tolist() == [0]


def test_two_targets_get_the_jointly_optimal_assignment():
    t, n = 3, 4
    m0, b0 = _target(t, x0=0)
    m1, b1 = _target(t, x0=4)
    outputs = _random_outputs(t, n)
    outputs["pred_masks"][0, :, 2] = 10 * (2 * m0 - 1)
    outputs["pred_boxes"][0, :, 2] = b0
    outputs["pred_masks"][0, :, 0] = 10 * (2 * m1 - 1)
    outputs["pred_boxes"][0, :, 0] = b1
    target = {
        "valid": torch.ones(2, t, dtype=torch.bool),
        "boxes": torch.stack([b0, b1]),
        "masks": torch.stack([m0, m1]),
    }
    ((rows, cols),) = SequenceMatcher(WEIGHTS)(outputs, [target])
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 2, 1: 0}


def test_box_and_class_costs_ignore_absent_frames():
    t, n = 4, 3
    masks, boxes = _target(t)
    valid = torch.tensor([True, True, False, True])
    masks[2] = 0
    boxes[2] = 0
    target = {"valid": valid[None], "boxes": boxes[None], "masks": masks[None]}
    matcher = SequenceMatcher(WEIGHTS)
    outputs = _random_outputs(t, n)
    args = [outputs[k][0] for k in ("pred_logits", "pred_boxes", "pred_masks")]
    before = matcher.cost_matrix(*args, target)
    args[0][2] = 50.0  # logits at the absent frame
    args[1][2] = torch.tensor([0.9, 0.1, 0.05, 0.05])  # boxes at the absent frame
    after = matcher.cost_matrix(*args, target)
    torch.testing.assert_close(before, after)
    args[0][0, 1] = 50.0  # a confident query at a visible frame gets cheaper
    assert matcher.cost_matrix(*args, target)[1, 0] < after[1, 0]


def test_batch_size_mismatch_is_reported():
    outputs = _random_outputs(2, 3)
    try:
        SequenceMatcher(WEIGHTS)(outputs, [])
    except ValueError as err:
        assert "0 targets for a batch of 1" in str(err)
    else:
        raise AssertionError("expected a ValueError")


def test_one_slot_and_one_target_skip_the_costs(monkeypatch):
    t = 3
    masks, boxes = _target(t)
    valid = torch.ones(1, t, dtype=torch.bool)
    target = {"valid": valid, "boxes": boxes[None], "masks": masks[None]}
    matcher = SequenceMatcher(WEIGHTS)

    def no_costs(*args):
        raise AssertionError("costs computed for a forced assignment")

    monkeypatch.setattr(matcher, "cost_matrix", no_costs)
    ((rows, cols),) = matcher(_random_outputs(t, 1), [target])
    assert rows.tolist() == [0] and cols.tolist() == [0]
    with pytest.raises(AssertionError, match="forced"):
        matcher(_random_outputs(t, 2), [target])  # two slots: the costs decide
