"""Consistency of repeated answers: agreement, Fleiss' kappa, entropy, IoU spread, dispersion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from GliomaCompareLib.geometry import Box, Polygon, box_to_mask, polygon_to_mask
from GliomaCompareLib.metrics.consistency import (
    agreement,
    box_iou,
    box_iou_spread,
    fleiss_kappa,
    label_entropy,
    point_dispersion_mm,
    polygon_iou_spread,
)

# Fleiss (1971) style worked example (as in Wikipedia's "Fleiss' kappa" article): 10 subjects,
# 14 raters, 5 categories; kappa = 0.210.
FLEISS_TABLE = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)


def table_to_labels(table):
    return [[cat for cat, k in enumerate(row) for _ in range(k)] for row in table]


def test_fleiss_kappa_textbook_example_and_statsmodels():
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_kappa

    labels = table_to_labels(FLEISS_TABLE)
    assert fleiss_kappa(labels) == pytest.approx(0.210, abs=1e-3)
    assert fleiss_kappa(labels) == pytest.approx(sm_kappa(FLEISS_TABLE, method="fleiss"), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_fleiss_kappa_random_tables_match_statsmodels(seed):
    from statsmodels.stats.inter_rater import aggregate_raters
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_kappa

    rng = np.random.default_rng(seed)
    items, runs = int(rng.integers(5, 60)), int(rng.integers(2, 8))
    truth = rng.integers(0, 3, items)
    labels = np.where(
        rng.random((items, runs)) < 0.7, truth[:, None], rng.integers(0, 3, (items, runs))
    )
    table, _ = aggregate_raters(labels)
    assert fleiss_kappa(labels) == pytest.approx(sm_kappa(table, method="fleiss"), abs=1e-12)
    names = np.array(["HGG", "LGG", "none"], dtype=object)[labels]  # strings work the same
    assert fleiss_kappa(names) == pytest.approx(fleiss_kappa(labels), abs=1e-12)


def test_fleiss_kappa_extremes():
    perfect = [["HGG"] * 4, ["LGG"] * 4, ["HGG"] * 4]
    assert fleiss_kappa(perfect) == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa([["HGG"] * 3] * 5))  # one category only: undefined
    alternating = [["HGG", "LGG"]] * 10  # always split: worse than chance
    assert fleiss_kappa(alternating) < 0


def test_agreement_and_missing_answers():
    labels = [
        ["HGG", "HGG", "HGG"],
        ["HGG", "LGG", "HGG"],
        [None, None, None],  # never answered: consistent (about failing)
        ["LGG", None, "LGG"],
    ]
    res = agreement(labels)
    np.testing.assert_array_equal(res.per_item, [True, False, True, False])
    np.testing.assert_allclose(res.modal_fraction, [1, 2 / 3, 1, 2 / 3])
    assert res.rate == 0.5 and res.n_items == 4 and res.n_runs == 3
    assert res.to_dict()["rate"] == 0.5
    nan_table = np.array([[1.0, np.nan], [np.nan, np.nan]])
    np.testing.assert_array_equal(agreement(nan_table).per_item, [False, True])
    with pytest.raises(ValueError, match="2 runs"):
        agreement([["HGG"], ["LGG"]])
    with pytest.raises(ValueError, match="item #1"):
        agreement([["HGG", "HGG"], ["LGG"]])


def test_label_entropy():
    labels = [
        ["A", "A", "A", "A"],
        ["A", "A", "B", "B"],
        ["A", "B", "C", "D"],
        ["A", "A", "A", "B"],
    ]
    h = label_entropy(labels)
    expected_last = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    np.testing.assert_allclose(h, [0.0, 1.0, 2.0, expected_last])
    np.testing.assert_allclose(
        label_entropy(labels, normalize=True), [0, 0.5, 1.0, expected_last / 2]
    )
    np.testing.assert_allclose(label_entropy(labels, base=math.e)[1], math.log(2))


def test_box_iou_exact_and_equal_to_masks():
    assert box_iou(Box(0, 0, 9, 9), Box(5, 0, 14, 9)) == pytest.approx(50 / 150)
    assert box_iou(Box(0, 0, 9, 9), Box(20, 20, 29, 29)) == 0.0
    rng = np.random.default_rng(0)
    shape = (30, 40)
    for _ in range(50):
        a = Box(*rng.uniform(-5, 25, 2), *rng.uniform(10, 45, 2))
        b = Box(*rng.uniform(-5, 25, 2), *rng.uniform(10, 45, 2))
        ma, mb = box_to_mask(a, shape), box_to_mask(b, shape)
        union = (ma | mb).sum()
        expected = 1.0 if union == 0 else (ma & mb).sum() / union
        assert box_iou(a, b, shape) == pytest.approx(expected, abs=1e-12)


def test_box_iou_spread_per_item():
    same = Box(10, 10, 19, 19)
    boxes = [
        [same, same, same],
        [Box(0, 0, 9, 9), Box(5, 0, 14, 9), None],  # one failed answer: one pair left
        [same, None, None],  # fewer than 2 repeats: no value
    ]
    res = box_iou_spread(boxes, shape=(64, 64))
    np.testing.assert_allclose(res.per_item[:2], [1.0, 1 / 3])
    assert math.isnan(res.per_item[2])
    np.testing.assert_array_equal(res.n_valid, [3, 2, 1])
    assert res.n_items == 2 and res.mean == pytest.approx((1 + 1 / 3) / 2)
    spread = box_iou_spread([[Box(0, 0, 9, 9), Box(0, 0, 9, 9), Box(0, 0, 4, 9)]])
    np.testing.assert_allclose(spread.per_item_worst, [0.5])
    np.testing.assert_allclose(spread.per_item, [(1 + 0.5 + 0.5) / 3])
    np.testing.assert_allclose(spread.per_item_sd, [np.std([1, 0.5, 0.5])])


def test_polygon_iou_spread_matches_masks():
    shape = (40, 40)
    tri = Polygon(((5, 5), (30, 5), (5, 30)))
    sq = Polygon(((5, 5), (30, 5), (30, 30), (5, 30)))
    res = polygon_iou_spread([[tri, tri], [tri, sq], [sq, None]], shape)
    mt, ms = polygon_to_mask(tri, shape), polygon_to_mask(sq, shape)
    assert res.per_item[0] == 1.0
    assert res.per_item[1] == pytest.approx((mt & ms).sum() / (mt | ms).sum())
    assert math.isnan(res.per_item[2])


def test_point_dispersion_mm():
    pts = np.array(
        [
            [[10, 10], [10, 10], [10, 10]],  # identical
            [[0, 0], [4, 0], [np.nan, np.nan]],  # two valid, 4 columns apart
            [[0, 0], [0, 3], [0, 6]],  # along rows
        ],
        dtype=float,
    )
    res = point_dispersion_mm(pts, pixel_spacing=(0.5, 2.0))
    np.testing.assert_allclose(res.per_item[0], 0.0)
    np.testing.assert_allclose(res.per_item[1], 1.0)  # each is 2 cols = 1 mm from the mean
    np.testing.assert_allclose(res.per_item_worst[1], 2.0)
    np.testing.assert_allclose(res.per_item[2], math.sqrt((36 + 0 + 36) / 3))  # rows * 2 mm
    np.testing.assert_allclose(res.per_item_worst[2], 12.0)
    np.testing.assert_array_equal(res.n_valid, [3, 2, 3])
    per_item_spacing = point_dispersion_mm(pts, pixel_spacing=[[1, 1], [0.5, 2.0], [1, 1]])
    np.testing.assert_allclose(per_item_spacing.per_item[1], 1.0)
    np.testing.assert_allclose(per_item_spacing.per_item_worst[2], 6.0)
    with pytest.raises(ValueError, match="items, runs, 2"):
        point_dispersion_mm(np.zeros((3, 2)))
