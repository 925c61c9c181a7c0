"""Tracklet-language grounding head: pooling, training, target choice and the model ensemble."""

import pytest
import torch

from rvos_d2.modeling.heads.tracklet_grounding import (
    TrackletGroundingHead,
    ensemble_probabilities,
    grounding_loss,
    grounding_target,
    masked_average_pool,
    video_scores,
)

T, SIZE, DIM = 3, 8, 16


def small_head() -> TrackletGroundingHead:
    return TrackletGroundingHead(
        visual_dim=3, hidden_dim=DIM, num_layers=1, num_heads=2, dim_feedforward=32, dropout=0.0
    )


def hand_made_video():
    """Three frames whose features are one-hot colours: a red object top-left, a blue one
    bottom-right, green background; tracklets of the red object, the blue one, the background."""
    features = torch.zeros(T, 3, SIZE, SIZE)
    features[:, 2] = 1.0
    masks = torch.zeros(3, T, SIZE * 2, SIZE * 2, dtype=torch.bool)  # masks at twice the size
    for t in range(T):
        masks[0, t, 2 + t : 6 + t, 2:6] = True
        masks[1, t, 10:14, 9 + t : 13 + t] = True
    masks[2] = ~(masks[0] | masks[1])
    weights = torch.nn.functional.adaptive_avg_pool2d(masks.float(), (SIZE, SIZE))
    for colour in (0, 1):  # the objects' cells take their colour
        on = weights[colour] > 0
        features[on.unsqueeze(1).expand_as(features)] = 0.0
        features[:, colour][on] = 1.0
    return features, masks


def test_masked_average_pool_is_the_mean_under_the_mask():
    torch.manual_seed(0)
    features = torch.randn(2, 4, 4, 4)
    masks = torch.zeros(2, 2, 8, 8, dtype=torch.bool)
    masks[0, :, :4, :4] = True  # exactly the top-left 2 x 2 feature cells
    masks[1, 1, 6:, 6:] = True  # one cell in frame 1, nothing in frame 0
    pooled = masked_average_pool(features, masks)
    assert pooled.shape == (2, 2, 4)
    torch.testing.assert_close(pooled[:, 0], features[:, :, :2, :2].mean(dim=(-2, -1)))
    torch.testing.assert_close(pooled[1, 1], features[1, :, 3, 3])
    assert torch.equal(pooled[0, 1], torch.zeros(4))
    with pytest.raises(ValueError, match="same T"):
        masked_average_pool(features, masks[:, :1])


def test_grounding_picks_the_right_tracklet_after_training():
    torch.manual_seed(0)
    features, masks = hand_made_video()
    vocabulary = torch.randn(4, DIM)  # [CLS], "red", "blue", [SEP]
    expressions = {0: vocabulary[[0, 1, 3]], 1: vocabulary[[0, 2, 3]]}  # target -> words
    word_mask = torch.zeros(3, dtype=torch.bool)
    head = small_head()
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for step in range(80):
        target = step % 2
        order = torch.randperm(3)  # the answer must not depend on the tracklets' order
        logits = head(features, masks[order], expressions[target], word_mask)
        loss = grounding_loss(logits, int((order == target).nonzero()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    with torch.no_grad():
        for target, words in expressions.items():
            for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
                order = torch.tensor(order)
                scores = video_scores(head(features, masks[order], words, word_mask))
                assert int(order[scores.argmax()]) == target
                assert scores.sum().item() == pytest.approx(1.0)


def test_training_step_gives_finite_loss_and_gradients():
    torch.manual_seed(0)
    head = small_head()
    features, masks = hand_made_video()
    words = torch.randn(5, DIM)
    word_mask = torch.tensor([False, False, False, True, True])
    logits = head(features, masks.float() * 0.8, words, word_mask)
    assert logits.shape == (T, 3)
    loss = grounding_loss(logits, 1)
    assert torch.isfinite(loss)
    loss.backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert head.modality_embed.weight.grad.abs().sum() > 0
    # padded words are ignored
    words_changed = words.clone()
    words_changed[3:] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(
            head.eval()(features, masks, words, word_mask),
            head(features, masks, words_changed, word_mask),
        )


def test_grounding_target_is_the_best_tracklet_iou():
    _, masks = hand_made_video()
    gt = masks[1].clone()
    gt[:, 10, 9:] = True  # a little larger than tracklet 1
    index, iou = grounding_target(masks, gt)
    assert index == 1 and 0.5 < iou < 1.0
    annotated = torch.tensor([True, False, False])
    index, _ = grounding_target(masks, gt, annotated)
    assert index == 1
    with pytest.raises(ValueError, match="gt_masks"):
        grounding_target(masks, gt[:2])


def test_ensemble_averages_probabilities():
    a = torch.tensor([0.7, 0.2, 0.1])
    b = torch.tensor([0.1, 0.6, 0.3])
    c = torch.tensor([0.2, 0.5, 0.3])
    mean = ensemble_probabilities([a, b, c])
    torch.testing.assert_close(mean, torch.tensor([1.0, 1.3, 0.7]) / 3)
    assert int(mean.argmax()) == 1  # the majority wins over a single confident model
    with pytest.raises(ValueError, match="shape"):
        ensemble_probabilities([a, torch.rand(2)])
