"""Tracklet IoU (Eq. 3) and tracklet-NMS against brute-force loops on random tracklets."""

import pytest
import torch

from rvos_d2.modeling.tracklets import Tracklets, tracklet_iou, tracklet_nms, tracklet_scores


def random_tracklets(p: int, t: int, h: int, w: int, seed: int = 0) -> Tracklets:
    """P random box-shaped tracklets (some empty in some frames) with random scores."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(p, t, h, w, dtype=torch.bool)
    for i in range(p):
        for f in range(t):
            if torch.rand(1, generator=gen) < 0.15:
                continue  # absent in this frame
            y0, x0 = torch.randint(0, h - 2, (2,), generator=gen).tolist()
            y1 = y0 + 1 + int(torch.randint(0, h - y0, (1,), generator=gen))
            x1 = x0 + 1 + int(torch.randint(0, w - x0, (1,), generator=gen))
            masks[i, f, y0:y1, x0:x1] = True
    return Tracklets(
        masks=masks,
        scores=torch.rand(p, generator=gen),
        confidence=torch.rand(p, t, generator=gen),
        key_frames=torch.randint(0, t, (p,), generator=gen),
        sources=torch.zeros(p, dtype=torch.long),
    )


def brute_force_iou(masks: torch.Tensor) -> torch.Tensor:
    """Eq. 3 pair by pair and frame by frame."""
    p, t = masks.shape[:2]
    iou = torch.zeros(p, p)
    for i in range(p):
        for j in range(p):
            inter = sum(int((masks[i, f] & masks[j, f]).sum()) for f in range(t))
            union = sum(int((masks[i, f] | masks[j, f]).sum()) for f in range(t))
            iou[i, j] = inter / union if union > 0 else 0.0
    return iou


def brute_force_nms(scores: list[float], iou: torch.Tensor, threshold: float, max_keep: int):
    """Textbook greedy NMS over a precomputed IoU matrix."""
    remaining = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    while remaining and len(keep) < max_keep:
        best = remaining.pop(0)
        keep.append(best)
        remaining = [j for j in remaining if iou[best, j] <= threshold]
    return keep


def test_iou_matches_brute_force():
    tracklets = random_tracklets(9, 6, 12, 14, seed=1)
    expected = brute_force_iou(tracklets.masks)
    torch.testing.assert_close(tracklet_iou(tracklets.masks), expected, rtol=1e-6, atol=1e-6)
    # some pairs overlap partially, so the comparison is not trivial
    off_diagonal = expected[~torch.eye(9, dtype=torch.bool)]
    assert ((off_diagonal > 0.05) & (off_diagonal < 0.95)).any()


def test_iou_of_two_sets_and_probabilities():
    a, b = random_tracklets(4, 5, 10, 10, seed=2), random_tracklets(3, 5, 10, 10, seed=3)
    both = brute_force_iou(torch.cat([a.masks, b.masks]))[:4, 4:]
    torch.testing.assert_close(tracklet_iou(a.masks, b.masks), both)
    probabilities = a.masks.half() * 0.9 + 0.05  # foreground 0.95, background 0.05
    torch.testing.assert_close(tracklet_iou(probabilities, b.masks), both)


def test_iou_chunked_equals_unchunked():
    masks = random_tracklets(7, 11, 9, 8, seed=4).masks
    whole = tracklet_iou(masks, chunk_frames=11)
    for chunk in (1, 3, 4):
        torch.testing.assert_close(tracklet_iou(masks, chunk_frames=chunk), whole)


def test_iou_downsampled_is_iou_of_subsampled_masks():
    masks = random_tracklets(5, 4, 16, 16, seed=5).masks
    expected = brute_force_iou(masks[:, :, ::2, ::2].contiguous())
    torch.testing.assert_close(tracklet_iou(masks, downsample=2), expected)


def test_iou_sums_over_frames_before_dividing():
    """Eq. 3 is not the mean of per-frame IoUs: a big-overlap frame dominates."""
    masks = torch.zeros(2, 2, 10, 10, dtype=torch.bool)
    masks[:, 0] = True  # frame 0: both full, 100 / 100
    masks[0, 1, 0, 0] = True  # frame 1: disjoint single pixels, 0 / 2
    masks[1, 1, 9, 9] = True
    assert tracklet_iou(masks)[0, 1].item() == pytest.approx(100 / 102)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.1, 0.3])
def test_nms_matches_brute_force(seed, threshold):
    tracklets = random_tracklets(12, 5, 10, 10, seed=seed)
    iou = brute_force_iou(tracklets.masks)
    expected = brute_force_nms(tracklets.scores.tolist(), iou, threshold, max_keep=6)
    kept = tracklet_nms(tracklets, threshold, max_keep=6)
    assert kept.tolist() == expected
    assert len(expected) > 1  # something kept besides the best, something maybe suppressed


def test_nms_identical_keeps_higher_score_disjoint_keeps_both():
    masks = torch.zeros(4, 3, 8, 8, dtype=torch.bool)
    masks[0:2, :, :4, :4] = True  # 0 and 1 identical
    masks[2, :, 5:, 5:] = True  # 2 and 3 disjoint from everything
    masks[3, :, 5:, :2] = True
    tracklets = Tracklets(
        masks=masks,
        scores=torch.tensor([0.3, 0.8, 0.5, 0.1]),
        confidence=torch.ones(4, 3),
        key_frames=torch.zeros(4, dtype=torch.long),
        sources=torch.zeros(4, dtype=torch.long),
    )
    assert tracklet_nms(tracklets, 0.5, max_keep=10).tolist() == [1, 2, 3]
    assert tracklet_nms(tracklets, 0.5, max_keep=2).tolist() == [1, 2]


def test_tracklets_container():
    tracklets = random_tracklets(5, 4, 6, 6)
    picked = tracklets[torch.tensor([3, 1])]
    assert len(picked) == 2 and picked.num_frames == 4
    assert torch.equal(picked.masks[0], tracklets.masks[3])
    assert len(Tracklets.cat([picked, tracklets[0]])) == 3
    with pytest.raises(ValueError, match="confidence"):
        Tracklets(
            masks=tracklets.masks,
            scores=tracklets.scores,
            confidence=tracklets.confidence[:, :2],
            key_frames=tracklets.key_frames,
            sources=tracklets.sources,
        )


def test_tracklet_scores_and_argument_errors():
    scores = tracklet_scores(torch.tensor([0.5, 1.0]), torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    torch.testing.assert_close(scores, torch.tensor([0.25, 0.5]))
    masks = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="masks_b"):
        tracklet_iou(masks, torch.zeros(2, 2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="downsample"):
        tracklet_iou(masks, downsample=0)


@pytest.mark.gpu
def test_iou_and_nms_on_cuda_match_cpu():
    tracklets = random_tracklets(10, 6, 16, 16, seed=6)
    on_gpu = tracklets.to("cuda")
    iou = tracklet_iou(on_gpu.masks.half(), chunk_frames=4)
    assert iou.device.type == "cuda"
    torch.testing.assert_close(iou.cpu(), tracklet_iou(tracklets.masks))
    kept = tracklet_nms(on_gpu, 0.2, max_keep=5)
    assert kept.device.type == "cuda"
    assert kept.cpu().tolist() == tracklet_nms(tracklets, 0.2, max_keep=5).tolist()
