"""Metrics: hand-computed cases and agreement with a loop-based oracle of the DAVIS-2017 rules."""

import math

import cv2
import numpy as np
import pytest

from rvos_d2.evaluation import metrics


def _box(shape, y0, y1, x0, x1):
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# ---------------------------------------------------------------------------------------------
# Test oracle: a literal, pixel-by-pixel reading of the DAVIS-2017 definitions (db_eval_iou,
# f_measure, _seg2bmap, disk structuring element). Deliberately slow and simple.
# ---------------------------------------------------------------------------------------------


def oracle_j(pred, gt):
    inter = union = 0
    for y in range(pred.shape[0]):
        for x in range(pred.shape[1]):
            inter += bool(pred[y, x] and gt[y, x])
            union += bool(pred[y, x] or gt[y, x])
    return 1.0 if union == 0 else inter / union


def oracle_boundary(mask):
    """seg2bmap: compare with the east, south and south-east pixel (zero outside); the last row
    is then recomputed from the east pixel only, the last column from the south pixel only, and
    the bottom-right pixel is cleared."""
    h, w = mask.shape

    def at(y, x):
        return bool(mask[y, x]) if y < h and x < w else False

    bmap = [[False] * w for _ in range(h)]
    for y in range(h):
        for x in range(w):
            m = at(y, x)
            bmap[y][x] = (m != at(y, x + 1)) or (m != at(y + 1, x)) or (m != at(y + 1, x + 1))
    for x in range(w):
        bmap[h - 1][x] = at(h - 1, x) != at(h - 1, x + 1)
    for y in range(h):
        bmap[y][w - 1] = at(y, w - 1) != at(y + 1, w - 1)
    bmap[h - 1][w - 1] = False
    return {(y, x) for y in range(h) for x in range(w) if bmap[y][x]}


def oracle_f(pred, gt, bound_th=0.008):
    h, w = pred.shape
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.sqrt(h * h + w * w))
    radius = int(radius)
    disk = [
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if dy * dy + dx * dx <= radius * radius
    ]
    pred_b, gt_b = oracle_boundary(pred), oracle_boundary(gt)

    def matched(points, others):
        return sum(any((y + dy, x + dx) in others for dy, dx in disk) for y, x in points)

    if not pred_b and gt_b:
        precision, recall = 1.0, 0.0
    elif pred_b and not gt_b:
        precision, recall = 0.0, 1.0
    elif not pred_b and not gt_b:
        precision, recall = 1.0, 1.0
    else:
        precision = matched(pred_b, gt_b) / len(pred_b)
        recall = matched(gt_b, pred_b) / len(gt_b)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _random_mask(rng, shape):
    h, w = shape
    kind = rng.integers(0, 8)
    if kind == 0:
        return np.zeros(shape, dtype=bool)
    if kind == 1:
        return np.ones(shape, dtype=bool)
    if kind == 2:  # rectangle, possibly touching or spanning the border
        y0, y1 = sorted(rng.integers(0, h + 1, 2))
        x0, x1 = sorted(rng.integers(0, w + 1, 2))
        return _box(shape, y0, y1, x0, x1)
    if kind == 3:  # one-pixel-wide line: row, column or diagonal
        mask = np.zeros(shape, dtype=bool)
        which = rng.integers(0, 3)
        if which == 0:
            mask[rng.integers(0, h), :] = True
        elif which == 1:
            mask[:, rng.integers(0, w)] = True
        else:
            n = min(h, w)
            mask[np.arange(n), np.arange(n)] = True
        return mask
    if kind == 4:  # single pixel, often in a corner
        mask = np.zeros(shape, dtype=bool)
        y = rng.choice([0, h - 1, rng.integers(0, h)])
        x = rng.choice([0, w - 1, rng.integers(0, w)])
        mask[y, x] = True
        return mask
    if kind == 5:  # salt noise
        return rng.random(shape) < rng.uniform(0.05, 0.6)
    # smooth blobs
    noise = rng.random(shape).astype(np.float32)
    return cv2.GaussianBlur(noise, (0, 0), rng.uniform(1, 4)) > rng.uniform(0.45, 0.55)


def _perturb(rng, mask):
    """A nearby prediction: shifted and with a few pixels flipped."""
    shifted = np.roll(mask, (rng.integers(-3, 4), rng.integers(-3, 4)), axis=(0, 1))
    return shifted ^ (rng.random(mask.shape) < 0.02)


SHAPES = [(1, 1), (1, 2), (2, 1), (1, 17), (23, 1), (2, 3), (7, 7), (16, 24), (40, 60), (1, 300)]
SHAPES += [(300, 1), (96, 128)]


def test_agreement_with_oracle_on_random_masks():
    rng = np.random.default_rng(0)
    worst = 0.0
    for n in range(180):
        shape = SHAPES[n % len(SHAPES)]
        gt = _random_mask(rng, shape)
        pred = _perturb(rng, gt) if rng.random() < 0.4 else _random_mask(rng, shape)
        bound_th = 0.008 if n % 3 else float(rng.choice([0.05, 2]))
        worst = max(worst, abs(metrics.region_similarity(pred, gt) - oracle_j(pred, gt)))
        f, f_oracle = metrics.contour_accuracy(pred, gt, bound_th), oracle_f(pred, gt, bound_th)
        worst = max(worst, abs(f - f_oracle))
    assert worst <= 1e-3


@pytest.mark.parametrize("shape", [(1, 9), (9, 1), (5, 6), (30, 40)])
def test_boundary_map_matches_oracle_exhaustively_small(shape):
    rng = np.random.default_rng(1)
    for _ in range(30):
        mask = _random_mask(rng, shape)
        got = {tuple(p) for p in np.argwhere(metrics.boundary_map(mask))}
        assert got == oracle_boundary(mask)


# ---------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------


def test_j_of_two_overlapping_squares():
    a = _box((10, 10), 2, 6, 2, 6)  # 16 pixels
    b = _box((10, 10), 4, 8, 4, 8)  # 16 pixels, 4 shared
    assert metrics.region_similarity(a, b) == pytest.approx(4 / 28)
    assert metrics.intersection_union(a, b) == (4, 28)


def test_j_empty_conventions():
    empty, box = np.zeros((5, 5), bool), _box((5, 5), 1, 3, 1, 3)
    assert metrics.region_similarity(empty, empty) == 1.0
    assert metrics.region_similarity(empty, box) == 0.0
    assert metrics.region_similarity(box, empty) == 0.0


def test_boundary_map_of_a_square_is_its_perimeter_shifted_towards_the_origin():
    mask = _box((6, 6), 1, 4, 1, 4)
    expected = np.zeros((6, 6), bool)
    expected[0, 0:4] = expected[3, 0:4] = expected[0:4, 0] = expected[0:4, 3] = True
    np.testing.assert_array_equal(metrics.boundary_map(mask), expected)


def test_boundary_map_of_a_full_image_is_empty():
    # Every pixel equals its in-image neighbours; the last row/column compare only inside.
    assert not metrics.boundary_map(np.ones((4, 7), bool)).any()


def test_boundary_radius_is_ceil_of_diagonal_fraction():
    assert metrics.boundary_radius(720, 1280) == 12  # 0.008 * 1468.6 = 11.75
    assert metrics.boundary_radius(480, 854) == 8  # 0.008 * 979.6 = 7.84
    assert metrics.boundary_radius(1, 1) == 1
    assert metrics.boundary_radius(10, 10, bound_th=3) == 3
    with pytest.raises(ValueError, match="whole"):
        metrics.boundary_radius(10, 10, bound_th=2.5)


@pytest.mark.parametrize(
    "mask",
    [
        _box((20, 30), 5, 12, 4, 20),
        _box((20, 30), 0, 20, 0, 5),  # touches three borders
        _box((1, 9), 0, 1, 2, 5),
        _box((20, 30), 7, 8, 3, 4),  # single pixel
    ],
)
def test_f_of_identical_masks_is_one(mask):
    assert metrics.contour_accuracy(mask, mask) == 1.0


def test_f_empty_conventions():
    empty, box = np.zeros((8, 8), bool), _box((8, 8), 2, 5, 2, 5)
    assert metrics.contour_accuracy(empty, empty) == 1.0
    assert metrics.contour_accuracy(empty, box) == 0.0
    assert metrics.contour_accuracy(box, empty) == 0.0
    # A full mask has no boundary pixel either: it scores like an empty one.
    full = np.ones((8, 8), bool)
    assert metrics.contour_accuracy(full, empty) == 1.0
    assert metrics.contour_accuracy(full, box) == 0.0


def test_f_of_shifted_squares_by_hand():
    # 100 x 100 image: radius ceil(0.008 * 141.4) = 2. Square rows/cols 20..39 has boundary
    # rows {19, 39} x cols 19..39 and cols {19, 39} x rows 20..38 (80 pixels).
    a = _box((100, 100), 20, 40, 20, 40)
    # Shift by one column: every boundary pixel is within distance 1 of the other boundary.
    assert metrics.contour_accuracy(a, np.roll(a, 1, axis=1)) == 1.0
    # Shift by three columns: of a's 80 boundary pixels, the top and bottom rows match at
    # columns 20..39 (2 x 20), its left column not at all, its right column only at rows
    # 20, 21, 37, 38 (within 2 of b's top/bottom rows): 44 / 80. By symmetry recall is the same.
    b = np.roll(a, 3, axis=1)
    assert metrics.contour_accuracy(a, b) == pytest.approx(44 / 80)


def test_f_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same size"):
        metrics.contour_accuracy(np.zeros((4, 5), bool), np.zeros((5, 4), bool))


def test_precision_at_uses_strict_thresholds():
    prec = metrics.precision_at([0.55, 0.65, 0.95, 0.5])
    assert prec == {
        "prec@0.5": 3 / 4,
        "prec@0.6": 2 / 4,
        "prec@0.7": 1 / 4,
        "prec@0.8": 1 / 4,
        "prec@0.9": 1 / 4,
    }


def test_overall_iou_is_ratio_of_sums():
    assert metrics.overall_iou([1, 2], [4, 4]) == 3 / 8
    assert metrics.overall_iou([0, 0], [0, 0]) == 1.0


def _rles(masks):
    return [metrics.encode_mask(m) for m in masks]


def test_map_of_perfect_predictions_is_one():
    gts = [_box((20, 20), i, i + 6, 2 * i, 2 * i + 5) for i in range(4)]
    result = metrics.mask_average_precision(_rles(gts), _rles(gts), [0.9, 0.8, 0.7, 0.6])
    assert result == {"mAP": 1.0, "AP50": 1.0, "AP75": 1.0}


def test_map_of_disjoint_predictions_is_zero():
    gts = [_box((20, 20), 0, 5, 0, 5), _box((20, 20), 10, 15, 10, 15)]
    preds = [_box((20, 20), 10, 15, 10, 15), _box((20, 20), 0, 5, 0, 5)]
    result = metrics.mask_average_precision(_rles(gts), _rles(preds), [0.9, 0.8])
    assert result == {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0}


def test_map_by_hand_depends_on_score_ranking():
    gt0, gt1 = _box((10, 10), 0, 4, 0, 2), _box((10, 10), 2, 6, 4, 6)  # 8 pixels each
    pred1 = _box((10, 10), 2, 6, 4, 6)
    pred1[2:5, 5] = False  # 5 of gt1's 8 pixels: IoU 0.625
    gts, preds = _rles([gt0, gt1]), _rles([gt0, pred1])
    # IoU thresholds 0.50, 0.55, 0.60 match both (AP 1); the 7 thresholds 0.65..0.95 match only
    # the perfect one. Ranked first, it gives precision 1 up to recall 0.5: AP = 51 / 101 on
    # COCO's 101 recall points. Ranked second, precision there is 1/2.
    high_first = metrics.mask_average_precision(gts, preds, [0.9, 0.1])
    assert high_first["AP50"] == pytest.approx(1.0)
    assert high_first["AP75"] == pytest.approx(51 / 101)
    assert high_first["mAP"] == pytest.approx((3 + 7 * 51 / 101) / 10)
    low_first = metrics.mask_average_precision(gts, preds, [0.1, 0.9])
    assert low_first["AP50"] == pytest.approx(1.0)
    assert low_first["AP75"] == pytest.approx(0.5 * 51 / 101)


def test_map_rejects_mismatched_inputs():
    rles = _rles([_box((4, 4), 0, 2, 0, 2)])
    with pytest.raises(ValueError, match="one of each per sample"):
        metrics.mask_average_precision(rles, rles, [0.5, 0.4])


def test_benchmark_jf_returns_seconds_per_frame():
    assert math.isfinite(metrics.benchmark_jf(num_frames=2, height=36, width=64))
