"""Mask/class losses, their pairwise costs, and the sequence criterion."""

import math

import pytest
import torch

from rvos_d2.modeling.criterion import LOSS_REGISTRY, SetCriterion
from rvos_d2.modeling.losses import (
    dice_loss,
    downsample_masks,
    focal_loss,
    mask_focal_loss,
    pairwise_class_cost,
    pairwise_dice_cost,
    pairwise_mask_focal_cost,
)
from rvos_d2.modeling.matcher import MatchCostWeights, SequenceMatcher

BIG = 30.0
WEIGHTS = MatchCostWeights(cls=2.0, l1=5.0, giou=2.0, dice=5.0, focal=2.0)
LOSS_WEIGHTS = {
    "loss_cls": 2.0,
    "loss_bbox": 5.0,
    "loss_giou": 2.0,
    "loss_dice": 5.0,
    "loss_mask": 2.0,
}


def _criterion(losses=("labels", "boxes", "masks"), weights=LOSS_WEIGHTS):
    return SetCriterion(SequenceMatcher(WEIGHTS), weights, losses)


def test_dice_hand_case():
    logits = torch.tensor([[BIG, BIG, -BIG, -BIG]])
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    # 2 * |A.B| = 2, |A| + |B| = 4, smoothed by +1: 1 - 3 / 5
    assert dice_loss(logits, target).item() == pytest.approx(0.4, abs=1e-6)


def test_focal_hand_case():
    zero = torch.zeros(2)
    loss = focal_loss(zero, torch.tensor([1.0, 0.0]))
    # p = 0.5: ce = log 2, modulating factor 0.5 ** 2, alpha 0.25 for positives, 0.75 negatives
    assert loss[0].item() == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-5)
    assert loss[1].item() == pytest.approx(0.75 * 0.25 * math.log(2), rel=1e-5)


def test_perfect_prediction_has_near_zero_mask_losses():
    target = (torch.rand(3, 5 * 8 * 8) > 0.6).float()
    logits = BIG * (2 * target - 1)
    assert dice_loss(logits, target).max().item() < 1e-4
    assert mask_focal_loss(logits, target).max().item() < 1e-6
    wrong = -logits
    assert dice_loss(wrong, target).min().item() > 0.9


def test_pairwise_costs_match_row_losses():
    logits = torch.randn(4, 50)
    targets = (torch.rand(3, 50) > 0.5).float()
    dice = pairwise_dice_cost(logits, targets)
    focal = pairwise_mask_focal_cost(logits, targets)
    for i in range(4):
        for j in range(3):
            expected_dice = dice_loss(logits[i : i + 1], targets[j : j + 1])[0]
            expected_focal = mask_focal_loss(logits[i : i + 1], targets[j : j + 1])[0]
            assert dice[i, j].item() == pytest.approx(expected_dice.item(), rel=1e-5)
            assert focal[i, j].item() == pytest.approx(expected_focal.item(), rel=1e-5)


def test_class_cost_prefers_confident_queries():
    cost = pairwise_class_cost(torch.tensor([-4.0, 0.0, 4.0]))
    assert cost[0] > cost[1] > cost[2]


def test_downsample_masks_averages_blocks():
    masks = torch.zeros(2, 8, 8)
    masks[0, :4, :2] = 1
    out = downsample_masks(masks, 4)
    assert out.shape == (2, 2, 2)
    assert out[0, 0, 0].item() == pytest.approx(0.5)
    assert out[0, 1, 1].item() == 0
    padded = downsample_masks(torch.ones(1, 6, 8), 4)  # bottom rows padded with zeros
    torch.testing.assert_close(padded, torch.tensor([[[1.0, 1.0], [0.5, 0.5]]]))


def _clip(valid, n=3, t=3, h=8, w=8, matched=1):
    """A one-clip batch whose query `matched` predicts the target exactly."""
    masks = torch.zeros(1, t, h, w)
    masks[0, :, 2:6, 1:5] = 1
    masks[0, ~valid] = 0
    boxes = torch.tensor([0.4, 0.5, 0.3, 0.4]).repeat(1, t, 1)
    boxes[0, ~valid] = 0
    target = {"valid": valid[None], "boxes": boxes, "masks": masks}
    logits = torch.full((1, t, n), -BIG)
    logits[0, valid, matched] = BIG
    pred_boxes = torch.rand(1, t, n, 4) * 0.5 + 0.2
    pred_boxes[0, :, matched] = boxes[0]
    pred_masks = torch.randn(1, t, n, h, w)
    pred_masks[0, :, matched] = BIG * (2 * masks[0] - 1)
    outputs = {"pred_logits": logits, "pred_boxes": pred_boxes, "pred_masks": pred_masks}
    return outputs, [target]


def test_criterion_perfect_prediction_and_absent_frames():
    valid = torch.tensor([True, False, True])
    outputs, targets = _clip(valid)
    criterion = _criterion()
    losses = criterion(outputs, targets)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_giou", "loss_dice", "loss_mask"}
    for name, value in losses.items():
        assert torch.isfinite(value), name
        assert value.item() < 1e-3, (name, value.item())

    # claiming the target in the frame where it is absent must cost
    outputs["pred_logits"][0, 1, 1] = BIG
    assert criterion(outputs, targets)["loss_cls"].item() > 1.0


def test_criterion_aux_losses_and_gradients():
    outputs, targets = _clip(torch.tensor([True, True, True]))
    outputs = {k: v.clone().requires_grad_(True) for k, v in outputs.items()}
    aux = {k: v.detach().clone().requires_grad_(True) for k, v in outputs.items()}
    losses = _criterion()({**outputs, "aux_outputs": [aux, aux]}, targets)
    assert {"loss_dice_0", "loss_dice_1", "loss_cls_1"} <= set(losses)
    sum(losses.values()).backward()
    assert aux["pred_masks"].grad is not None and aux["pred_boxes"].grad is not None


def test_criterion_weighs_each_term_and_plugs_in_registered_losses():
    outputs, targets = _clip(torch.tensor([True, False, True]))
    outputs["pred_logits"][0, 1, 1] = BIG  # a non-zero class loss
    base = _criterion()(outputs, targets)["loss_cls"]
    doubled = _criterion(weights={**LOSS_WEIGHTS, "loss_cls": 4.0})(outputs, targets)["loss_cls"]
    torch.testing.assert_close(doubled, 2 * base)

    @LOSS_REGISTRY.register_as("test_count_layers")
    def count_layers(outputs, targets, indices, norms):
        return {"loss_count": torch.tensor(float(len(indices)))}

    try:
        weights = {**LOSS_WEIGHTS, "loss_count": 0.5}
        criterion = SetCriterion(
            SequenceMatcher(WEIGHTS),
            weights,
            ("labels", "test_count_layers"),
            ("test_count_layers",),
        )
        losses = criterion({**outputs, "aux_outputs": [outputs]}, targets)
        assert losses["loss_count"].item() == 0.5 and "loss_count_0" not in losses
        assert "loss_cls_0" in losses
        with pytest.raises(KeyError, match="no weight"):
            SetCriterion(SequenceMatcher(WEIGHTS), LOSS_WEIGHTS, ("test_count_layers",))(
                outputs, targets
            )
    finally:
        LOSS_REGISTRY._obj_map.pop("test_count_layers")
    with pytest.raises(KeyError, match="unknown losses"):
        _criterion(losses=("labels", "no_such_loss"))
