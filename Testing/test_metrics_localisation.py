"""Like-for-like localisation: oracle ceilings, the trivial baseline, per-slice Dice aggregated per
patient, the coverage ceiling of the 3D Dice, and the lenient polygon mask -- on hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest

from GliomaCompareLib import geometry as g
from GliomaCompareLib.data.slices import SliceGeometry
from GliomaCompareLib.metrics import localisation as loc
from GliomaCompareLib.metrics.localisation import CaseLocalisation, TrivialBaseline
from GliomaCompareLib.metrics.segmentation import dice
from GliomaCompareLib.vlm.scoring import score_slice

H, W = 40, 48


def rect(r0, r1, c0, c1, shape=(H, W)):
    """Rows r0..r1 and columns c0..c1 (inclusive)."""
    m = np.zeros(shape, bool)
    m[r0 : r1 + 1, c0 : c1 + 1] = True
    return m


def disc(cx, cy, radius, shape=(H, W)):
    rows, cols = np.indices(shape)
    return (cols - cx) ** 2 + (rows - cy) ** 2 <= radius**2


def slices_of(shape_xyz, indices):
    return [SliceGeometry.axial(np.eye(4), shape_xyz, k) for k in indices]


def volume(shape_xyz, masks: dict):
    """A volume holding ``masks[k]`` (an (H, W) slice image) on axial slice k."""
    out = np.zeros(shape_xyz, bool)
    for k, mask in masks.items():
        SliceGeometry.axial(np.eye(4), shape_xyz, k).insert(mask, out=out)
    return out


SHAPE = (W, H, 80)  # identity affine: (X, Y, Z) -> slice images (H, W) = (Y, X)


# --------------------------------------------------------------------------- oracle


def test_oracle_box_of_a_rectangle_is_exact_and_of_an_l_shape_is_its_box():
    r = rect(10, 19, 5, 14)
    assert loc.oracle_dice("box", r) == 1.0
    assert np.array_equal(loc.oracle_box(r), r)
    ell = r.copy()
    ell[10:15, 10:15] = False  # 100 - 25 = 75 pixels in a 100-pixel box
    assert loc.oracle_dice("box", ell) == pytest.approx(2 * 75 / (75 + 100))


def test_oracle_point_is_a_disc_at_the_true_centre():
    ref = disc(20, 18, 10)  # the very disc a 10 mm point answer draws at (20, 18)
    assert loc.oracle_dice("point", ref, radius_mm=10) == 1.0
    big = disc(20, 18, 12)  # same centre: the oracle disc lies inside it
    small = disc(20, 18, 10)
    expected = 2 * small.sum() / (small.sum() + big.sum())
    assert loc.oracle_dice("point", big, radius_mm=10) == pytest.approx(expected)
    assert expected > 0.8
    # the disc is drawn in mm: with 0.5 mm columns a 10 mm disc spans 41 columns
    spacing = (0.5, 1.0)
    ellipse = g.point_to_mask(g.Point(24, 18), (H, W), 10, spacing)
    assert loc.oracle_dice("point", ellipse, spacing, radius_mm=10) == 1.0
    assert loc.oracle_point(ellipse, spacing, radius_mm=10)[18].sum() == 41


def test_oracle_polygon_contains_the_region_with_at_most_k_vertices():
    r = rect(10, 19, 5, 14)
    assert loc.oracle_dice("polygon", r, max_vertices=4) == 1.0
    blob = disc(24, 20, 12)
    for k in (4, 6, 8):
        poly = loc.oracle_polygon(blob, k)
        assert not (blob & ~poly).any()  # a bounding polygon: the whole region inside
        assert np.array_equal(poly, g.polygon_to_mask(g.mask_polygon(blob, k), (H, W)))
    ceilings = [loc.oracle_dice("polygon", blob, max_vertices=k) for k in (4, 6, 8)]
    assert ceilings == sorted(ceilings) and ceilings[-1] > 0.9  # more vertices, tighter
    with pytest.raises(ValueError, match="max_vertices"):
        loc.oracle_mask("polygon", blob)
    with pytest.raises(ValueError, match="k must be >= 4"):
        loc.oracle_polygon(blob, 3)


def test_oracle_of_an_empty_slice_answers_nothing_and_is_skipped():
    empty = np.zeros((H, W), bool)
    for kind in loc.TASK_KINDS:
        assert not loc.oracle_mask(kind, empty, max_vertices=6).any()
        assert loc.oracle_dice(kind, empty, max_vertices=6) is None
    with pytest.raises(ValueError, match="Unknown localisation kind"):
        loc.oracle_mask("grade", empty)


@pytest.mark.parametrize("kind", loc.TASK_KINDS)
def test_a_perfect_answer_scores_exactly_the_ceiling(kind):
    """The exact answer of each kind, scored the way the VLM pipeline scores answers, gets the
    oracle's Dice: the oracle renders answers as the scoring does."""
    ref = disc(20, 18, 9) | rect(15, 30, 18, 33)  # a blob with a corner
    spacing = (1.0, 1.0)
    answer = {
        "point": g.mask_centroid(ref),
        "box": g.mask_box(ref),
        "polygon": g.mask_polygon(ref, max_vertices=6),
    }[kind]
    scored = score_slice(kind, answer, ref, spacing, radius_mm=7.0)
    ceiling = loc.oracle_dice(kind, ref, spacing, radius_mm=7.0, max_vertices=6)
    assert scored.dice == ceiling
    assert ceiling < 1.0  # none of the three kinds can be this shape exactly


# --------------------------------------------------------------------------- baseline


def test_mean_training_box_and_centre_are_placed_in_pixels():
    boxes = [(0.25, 0.25, 0.5, 0.5), (0.5, 0.5, 0.75, 0.75)]
    # mean (0.375, ..., 0.625) on 40x40: left edge 15 -> first column 15, right edge 25 -> 24
    assert loc.mean_training_box(boxes, (40, 40)) == g.Box(15, 15, 24, 24)
    centre = loc.mean_training_centre([(0.5, 0.5), (0.25, 0.75)], (40, 40))
    assert centre == g.Point(0.375 * 40 - 0.5, 0.625 * 40 - 0.5)
    with pytest.raises(ValueError, match="no training values"):
        loc.mean_training_box([], (40, 40))


def test_normalised_box_and_centre_round_trip_to_pixels():
    r = rect(10, 19, 5, 14)
    box = loc.normalised_box(r)
    assert box == pytest.approx((5 / W, 10 / H, 15 / W, 20 / H))
    assert loc.mean_training_box([box], (H, W)).as_tuple() == pytest.approx((5, 10, 14, 19))
    assert loc.mean_training_centre([loc.normalised_centre(r)], (H, W)).as_tuple() == (
        pytest.approx((9.5, 14.5))
    )


def test_trivial_baseline_ignores_the_image():
    a = rect(0, 9, 0, 9, (40, 40))  # normalised box (0, 0, 0.25, 0.25)
    b = rect(20, 29, 20, 29, (40, 40))  # (0.5, 0.5, 0.75, 0.75)
    base = TrivialBaseline.from_masks([a, np.zeros((40, 40), bool), b])
    assert base.n == 2  # the empty slice is skipped
    assert base.box == pytest.approx((0.25, 0.25, 0.5, 0.5))
    assert base.geometry("box", (40, 40)) == g.Box(10, 10, 19, 19)
    assert base.geometry("polygon", (40, 40)) == g.Box(10, 10, 19, 19)
    assert base.geometry("point", (40, 40)).as_tuple() == pytest.approx((14.5, 14.5))
    shown = base.mask("box", (40, 40))
    assert np.array_equal(shown, rect(10, 19, 10, 19, (40, 40)))
    # against a tumour at rows 10..19, columns 15..24: 5 of 10 columns overlap
    assert loc.slice_dice(shown, rect(10, 19, 15, 24, (40, 40))) == pytest.approx(0.5)
    disc_mask = base.mask("point", (40, 40), radius_mm=3)
    assert disc_mask.sum() == g.point_to_mask(g.Point(14.5, 14.5), (40, 40), 3).sum()
    with pytest.raises(ValueError, match="no training mask"):
        TrivialBaseline.from_masks([np.zeros((4, 4), bool)])


# --------------------------------------------------------------------------- one patient


def test_perfect_masks_on_10_of_69_slices_give_the_coverage_ceiling():
    """The issue's case: a tumour on 69 slices, perfect answers on 10 of them -> 3D Dice 20/79
    for a prism (equal areas), while every per-slice Dice is 1."""
    tumour = rect(10, 19, 8, 21)  # 140 pixels on each slice
    ref = volume(SHAPE, dict.fromkeys(range(5, 74), tumour))
    asked = slices_of(SHAPE, range(5, 74, 7))  # 10 slices
    assert len(asked) == 10
    case = loc.score_case("p1", "box", ref, asked, [tumour] * 10)
    assert case.dice == (1.0,) * 10 and case.oracle_dice == (1.0,) * 10
    assert case.dice_3d == pytest.approx(2 * 10 / (10 + 69))  # 0.2532
    assert case.dice_3d_ceiling == case.dice_3d
    assert case.slice_indices == tuple(range(5, 74, 7))


def test_coverage_ceiling_of_a_tapering_tumour_by_hand():
    radii = {k: 3 + min(k - 5, 73 - k) // 4 for k in range(5, 74)}  # grows, then shrinks
    masks = {k: disc(24, 20, r) for k, r in radii.items()}
    ref = volume(SHAPE, masks)
    chosen = [20, 25, 30, 35, 39, 40, 45, 50, 55, 60]
    area = {k: int(m.sum()) for k, m in masks.items()}
    box_area = {k: int(g.box_to_mask(g.mask_box(m), (H, W)).sum()) for k, m in masks.items()}
    total = sum(area.values())
    perfect = loc.score_case("p", "box", ref, slices_of(SHAPE, chosen), [masks[k] for k in chosen])
    expected_masks = 2 * sum(area[k] for k in chosen) / (sum(area[k] for k in chosen) + total)
    assert perfect.dice_3d == pytest.approx(expected_masks)
    # perfect *boxes* contain the tumour: overlap = tumour area, size = box area
    expected_boxes = 2 * sum(area[k] for k in chosen) / (sum(box_area[k] for k in chosen) + total)
    assert perfect.dice_3d_ceiling == pytest.approx(expected_boxes)
    assert perfect.dice_3d_ceiling < perfect.dice_3d < 0.4  # 10 of 69 slices, the largest ones


def test_cnn_is_scored_on_exactly_the_asked_slices():
    tumour = rect(10, 19, 8, 21)
    ref = volume(SHAPE, dict.fromkeys(range(10, 30), tumour))
    asked = [12, 20]
    # the CNN is perfect on slice 12, finds half the tumour on slice 20, and is wrong on slices
    # it was not asked about (a large false positive on slice 50)
    half = rect(10, 14, 8, 21)
    cnn = volume(SHAPE, {12: tumour, 20: half, 50: rect(0, 39, 0, 47)})
    case = loc.score_case(
        "p", "box", ref, slices_of(SHAPE, asked), [None, tumour], cnn=cnn.astype(np.uint8) * 2
    )
    assert case.cnn_dice == (1.0, pytest.approx(2 * 70 / (70 + 140)))
    assert dice(cnn, ref) < 0.2  # the 3D score would say something else entirely
    assert case.dice == (0.0, 1.0)  # the failed answer (None) scores 0, never dropped


def test_slices_without_reference_tumour_are_skipped_and_counted():
    tumour = rect(10, 19, 8, 21)
    ref = volume(SHAPE, {10: tumour, 11: tumour})
    asked = slices_of(SHAPE, [10, 40])  # slice 40 has no tumour (a label-free rule picked it)
    answer = rect(10, 19, 8, 21)
    case = loc.score_case("p", "box", ref, asked, [answer, answer], cnn=ref)
    assert case.dice == (1.0, None) and case.oracle_dice == (1.0, None)
    assert case.cnn_dice == (1.0, None)
    assert (case.n_scored, case.n_empty_reference) == (1, 1)
    assert case.means() == {
        "dice": 1.0,
        "oracle_dice": 1.0,
        "cnn_dice": 1.0,
        "baseline_dice": None,
        "lenient_dice": None,
        "dice_3d": case.dice_3d,
        "dice_3d_ceiling": case.dice_3d_ceiling,
    }
    # in 3D the answer on slice 40 is a false positive: 140 right, 140 wrong, 280 in WT
    assert case.dice_3d == pytest.approx(2 * 140 / (280 + 280))
    assert case.dice_3d_ceiling == pytest.approx(2 * 140 / (140 + 280))


def test_baseline_and_lenient_scores_on_the_same_slices():
    square = rect(10, 29, 10, 29)  # a 20x20 tumour
    ref = volume(SHAPE, {15: square})
    base = TrivialBaseline(box=(10 / W, 10 / H, 20 / W, 20 / H), centre=(0.5, 0.5), n=3)
    # a bow-tie answer over the square: the strict fill is two triangles, the hull the square
    bowtie = g.Polygon(((9.5, 9.5), (29.5, 9.5), (9.5, 29.5), (29.5, 29.5)))
    strict = g.polygon_to_mask(bowtie, (H, W))
    hull = g.polygon_hull_mask(bowtie, (H, W))
    case = loc.score_case(
        "p",
        "polygon",
        ref,
        slices_of(SHAPE, [15]),
        [strict],
        baseline=base,
        lenient_answers=[hull],
        max_vertices=6,
    )
    assert case.lenient_dice == (1.0,)
    assert case.dice[0] == pytest.approx(dice(strict, square)) and case.dice[0] < 0.8
    assert case.baseline_dice == (pytest.approx(2 * 100 / (100 + 400)),)  # rows/cols 10..19


def test_score_case_checks_its_inputs():
    ref = volume(SHAPE, {10: rect(1, 2, 1, 2)})
    asked = slices_of(SHAPE, [10])
    with pytest.raises(ValueError, match="2 answers for 1 slices"):
        loc.score_case("p", "box", ref, asked, [None, None])
    with pytest.raises(ValueError, match="max_vertices"):
        loc.score_case("p", "polygon", ref, asked, [None])
    with pytest.raises(ValueError, match="shape"):
        loc.score_case("p", "box", ref, asked, [np.zeros((3, 3), bool)])
    with pytest.raises(ValueError, match="CNN volume"):
        loc.score_case("p", "box", ref, asked, [None], cnn=np.zeros((2, 2, 2)))


# --------------------------------------------------------------------------- aggregation


def case(case_id, values, **kw):
    fields = {
        "kind": "box",
        "slice_indices": tuple(range(len(values))),
        "dice": tuple(values),
        "oracle_dice": tuple(None if v is None else 1.0 for v in values),
        "cnn_dice": None,
        "baseline_dice": None,
        "lenient_dice": None,
        "dice_3d": 0.1,
        "dice_3d_ceiling": 0.2,
    }
    fields.update(kw)
    return CaseLocalisation(case_id=case_id, **fields)


def test_patient_means_average_each_patient_first():
    rows = [("a", 1.0), ("b", 0.0), ("b", 0.0), ("b", None), ("a", 0.5), ("c", None)]
    assert loc.patient_means(rows) == {"a": 0.75, "b": 0.0}
    cases = {("vlm_base", "box"): [case("a", [1.0]), case("b", [0.0, 0.0, 0.0])]}
    (row,) = loc.localisation_rows(cases, n_bootstrap=200)
    assert row["dice_slices_mean"] == 0.5  # not 0.25, the mean over the four slices
    assert (row["n_patients"], row["n_slices"]) == (2, 4)


def test_localisation_rows_columns_and_like_for_like_rules():
    cases = {
        ("vlm_base", "box"): [
            case("a", [0.2, 0.4], cnn_dice=(0.8, 0.6), baseline_dice=(0.1, 0.1)),
            case("b", [0.6, None], cnn_dice=(0.9, None), baseline_dice=(0.3, None)),
            case("c", [None], cnn_dice=(None,), dice_3d=0.9),  # no scored slice: left out
        ],
        ("vlm_base", "point"): [case("a", [0.5], dice_3d=0.3), case("b", [0.7], cnn_dice=(1.0,))],
    }
    box, point = loc.localisation_rows(cases, n_bootstrap=500, seed=3)
    assert list(box) == list(loc.LOCALISATION_COLUMNS)
    assert (box["method"], box["task"]) == ("vlm_base", "box")
    assert (box["n_patients"], box["n_slices"], box["n_slices_empty_reference"]) == (2, 3, 2)
    assert box["dice_slices_mean"] == pytest.approx((0.3 + 0.6) / 2)
    assert box["cnn_dice_same_slices"] == pytest.approx((0.7 + 0.9) / 2)
    assert box["baseline_dice_same_slices"] == pytest.approx((0.1 + 0.3) / 2)
    assert box["oracle_dice_same_slices"] == 1.0
    assert box["dice_slices_lenient_mean"] is None
    assert (box["dice_3d_mean"], box["dice_3d_ceiling"]) == (pytest.approx(0.1), 0.2)
    assert box["dice_slices_ci_low"] <= box["dice_slices_mean"] <= box["dice_slices_ci_high"]
    # patient a has no CNN map in the point row: a CNN mean over b alone is not like for like
    assert point["cnn_dice_same_slices"] is None
    assert point["dice_3d_mean"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="appears twice"):
        loc.localisation_rows({("m", "box"): [case("a", [1.0]), case("a", [0.0])]})
    (empty,) = loc.localisation_rows({("m", "box"): [case("c", [None])]})
    assert empty["n_patients"] == 0 and empty["dice_slices_mean"] is None


def test_cnn_minus_vlm_dice_is_paired_per_patient_and_tested_with_wilcoxon():
    from scipy.stats import wilcoxon

    vlm = [0.1, 0.0, 0.3, 0.2, 0.05, 0.4, 0.0, 0.15]
    cnn = [0.8, 0.7, 0.6, 0.9, 0.75, 0.5, 0.85, 0.65]
    cases = {
        ("vlm_base", "box"): [
            case(f"p{i}", [v, v], cnn_dice=(c, c))
            for i, (v, c) in enumerate(zip(vlm, cnn, strict=True))
        ]
    }
    (row,) = loc.localisation_rows(cases, n_bootstrap=2000, seed=0)
    diff = np.array(cnn) - np.array(vlm)
    assert row["cnn_minus_vlm_dice"] == pytest.approx(diff.mean())
    assert row["cnn_minus_vlm_ci_low"] < diff.mean() < row["cnn_minus_vlm_ci_high"]
    assert row["cnn_minus_vlm_ci_low"] > 0  # the CNN is better on every patient
    assert row["wilcoxon_p"] == pytest.approx(wilcoxon(cnn, vlm).pvalue)
    assert row["wilcoxon_n"] == 8
    # without the CNN on those slices there is nothing to pair
    (alone,) = loc.localisation_rows({("m", "box"): [case("a", [0.5])]}, n_bootstrap=10)
    assert alone["cnn_minus_vlm_dice"] is None and alone["wilcoxon_p"] is None


def test_bootstrap_interval_is_deterministic_and_matches_scipy():
    from scipy.stats import bootstrap

    values = np.array([0.05, 0.1, 0.2, 0.22, 0.3, 0.35, 0.5, 0.55, 0.6, 0.8, 0.85, 0.9])
    ours = loc.bootstrap_mean_ci(values, n_bootstrap=20000, seed=1)
    assert ours == loc.bootstrap_mean_ci(values, n_bootstrap=20000, seed=1)
    ref = bootstrap(
        (values,), np.mean, n_resamples=20000, method="percentile", random_state=0
    ).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.015)
    assert loc.bootstrap_mean_ci([0.4], n_bootstrap=100) == (0.4, 0.4)
    assert loc.bootstrap_mean_ci([], n_bootstrap=100) is None
    assert loc.bootstrap_mean_ci(values, n_bootstrap=0) is None
    with pytest.raises(ValueError, match="ci_level"):
        loc.bootstrap_mean_ci(values, ci_level=1.0)


def test_slice_dice_checks_shapes():
    assert loc.slice_dice(rect(1, 2, 1, 2), rect(1, 2, 1, 2)) == 1.0
    assert loc.slice_dice(np.zeros((H, W)), rect(1, 2, 1, 2)) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        loc.slice_dice(np.zeros((3, 3)), np.zeros((4, 4)))


# --------------------------------------------------------------------------- lenient polygon


def test_polygon_hull_mask_of_a_bow_tie_is_the_square():
    bowtie = g.Polygon(((10, 10), (50, 10), (10, 50), (50, 50)))  # mis-ordered square
    square = g.Polygon(((10, 10), (50, 10), (50, 50), (10, 50)))
    shape = (64, 64)
    strict = g.polygon_to_mask(bowtie, shape)
    hull = g.polygon_hull_mask(bowtie, shape)
    assert not np.array_equal(strict, hull)
    assert np.array_equal(hull, g.polygon_to_mask(square, shape))
    assert not (strict & ~hull).any() and hull.sum() == 41 * 41
    assert strict.sum() < 0.6 * hull.sum()  # two triangles
    # a convex polygon in order: the same either way; vertex order and repeats do not matter
    assert np.array_equal(g.polygon_hull_mask(square, shape), g.polygon_to_mask(square, shape))
    pts = np.array([[50, 50], [10, 10], [30, 30], [10, 50], [50, 10], [10, 10]])
    assert np.array_equal(g.polygon_hull_mask(pts, shape), hull)


def test_polygon_hull_mask_degenerate_inputs_are_empty():
    shape = (20, 20)
    assert not g.polygon_hull_mask([(1, 1), (5, 5), (9, 9)], shape).any()  # collinear
    assert not g.polygon_hull_mask([(1, 1), (5, 5)], shape).any()
    assert not g.polygon_hull_mask([(1, 1), (np.nan, 5), (9, 1)], shape).any()
    part = g.polygon_hull_mask([(-5, -5), (10, -5), (10, 10), (-5, 10)], shape)
    assert part.sum() == 11 * 11  # clipped to the image: rows and columns 0..10
