"""Dice / HD95 / HD: checked against MONAI and against a brute-force computation of the same
definition, on random and adversarial masks, 2D and 3D, isotropic and anisotropic."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from GliomaCompareLib.metrics.segmentation import (
    RegionScore,
    dice,
    hausdorff,
    image_diagonal_mm,
    mask_surface,
    score_label_maps,
    score_masks,
    surface_distances,
)

DICE_TOL = 1e-6
HD_TOL = 1e-3  # mm


# --------------------------------------------------------------------------- references


def brute_surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with a face neighbour outside the mask or outside the image."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded.copy()
    for axis in range(mask.ndim):
        interior &= np.roll(padded, 1, axis=axis) & np.roll(padded, -1, axis=axis)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    return mask & ~interior[inner]


def brute_hd(pred, ref, spacing, percentile):
    """All pairwise surface distances; percentile of each direction, then the larger."""
    p = np.argwhere(brute_surface(pred)) * np.asarray(spacing, float)
    r = np.argwhere(brute_surface(ref)) * np.asarray(spacing, float)
    d = cdist(p, r)
    d_pr, d_rp = d.min(axis=1), d.min(axis=0)
    if percentile is None:
        return max(d_pr.max(), d_rp.max())
    return max(np.percentile(d_pr, percentile), np.percentile(d_rp, percentile))


def brute_dice(pred, ref):
    a, b = pred.sum(), ref.sum()
    return 1.0 if a + b == 0 else 2.0 * (pred & ref).sum() / (a + b)


def monai_hd(pred, ref, spacing, percentile):
    import torch
    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compute_hausdorff_distance(
            torch.from_numpy(pred)[None, None],
            torch.from_numpy(ref)[None, None],
            include_background=True,
            percentile=percentile,
            spacing=list(spacing),
        )
    return float(out)


def monai_dice(pred, ref):
    import torch
    from monai.metrics import compute_dice

    out = compute_dice(
        torch.from_numpy(pred)[None, None].float(),
        torch.from_numpy(ref)[None, None].float(),
        include_background=True,
    )
    return float(out)


# --------------------------------------------------------------------------- mask makers


def blob(shape, centre, radii, rng, noise=0.25):
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    r = sum(((g - c) / rad) ** 2 for g, c, rad in zip(grids, centre, radii, strict=True))
    return r + noise * rng.standard_normal(shape) < 1.0


def random_pair(rng, shape):
    centre = [s / 2 + rng.uniform(-2, 2) for s in shape]
    radii = [rng.uniform(2, s / 3) for s in shape]
    a = blob(shape, centre, radii, rng)
    b = blob(shape, [c + rng.uniform(-3, 3) for c in centre], radii, rng)
    return a, b


def adversarial_pairs():
    """(name, pred, ref, spacing) cases that stress the surface definition."""
    out = []
    z = np.zeros((12, 13, 9), bool)
    a, b = z.copy(), z.copy()
    a[3, 4, 5] = True
    b[8, 2, 1] = True
    out.append(("single voxels 3D", a, b, (1.0, 1.0, 1.0)))
    out.append(("single voxels anisotropic", a, b, (0.7, 1.3, 3.0)))
    a, b = z.copy(), z.copy()
    a[0, 0, 0] = True  # corner voxel
    b[2:6, 2:6, 2:6] = True
    out.append(("corner voxel vs cube", a, b, (1.0, 1.0, 1.0)))
    # thin shell vs filled ball: same outer surface plus an inner one
    g = np.indices((21, 21, 21)) - 10
    r = np.sqrt((g**2).sum(axis=0))
    shell = (r <= 8) & (r > 7)
    ball = r <= 8
    out.append(("thin shell vs ball", shell, ball, (1.0, 1.0, 1.0)))
    out.append(("thin shell vs ball anisotropic", shell, ball, (0.5, 1.0, 2.5)))
    # masks touching the image border (the border must count as background)
    a = np.zeros((10, 11, 7), bool)
    b = a.copy()
    a[:, :, :3] = True
    b[:, 3:, :] = True
    out.append(("border slabs", a, b, (1.0, 2.0, 1.5)))
    full = np.ones((6, 7, 5), bool)
    part = full.copy()
    part[2:4, 2:5, 1:4] = False
    out.append(("full image vs hollow", full, part, (1.0, 1.0, 1.0)))
    # one-voxel-thick plane vs a line (erosion leaves nothing of them)
    a = np.zeros((9, 9, 9), bool)
    b = a.copy()
    a[4, :, :] = True
    b[:, 4, 4] = True
    out.append(("plane vs line", a, b, (1.0, 1.0, 1.0)))
    # disjoint components far apart
    a = np.zeros((30, 8, 8), bool)
    b = a.copy()
    a[1:4, 2:5, 2:5] = True
    a[25:28, 2:5, 2:5] = True
    b[2:5, 2:6, 2:6] = True
    out.append(("two components vs one", a, b, (1.0, 1.0, 1.0)))
    # 2D cases
    a = np.zeros((15, 17), bool)
    b = a.copy()
    a[0, 0] = True
    b[14, 16] = True
    out.append(("2D opposite corners", a, b, (1.0, 1.0)))
    a = np.zeros((20, 20), bool)
    b = a.copy()
    a[3:15, 5] = True  # a thin line
    b[4:16, 4:9] = True
    out.append(("2D line vs rectangle", a, b, (0.8, 1.6)))
    return out


# --------------------------------------------------------------------------- tests


ADVERSARIAL = adversarial_pairs()


@pytest.mark.parametrize("name,pred,ref,spacing", ADVERSARIAL, ids=[c[0] for c in ADVERSARIAL])
def test_adversarial_masks_match_monai_and_brute_force(name, pred, ref, spacing):
    for percentile in (95, None):
        ours = hausdorff(pred, ref, spacing, percentile)
        assert ours == pytest.approx(brute_hd(pred, ref, spacing, percentile), abs=HD_TOL), name
        assert ours == pytest.approx(monai_hd(pred, ref, spacing, percentile), abs=HD_TOL), name
    assert dice(pred, ref) == pytest.approx(brute_dice(pred, ref), abs=DICE_TOL)
    assert dice(pred, ref) == pytest.approx(monai_dice(pred, ref), abs=DICE_TOL)


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_3d_match_monai_and_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(14, 26, 3))
    pred, ref = random_pair(rng, shape)
    spacing = (1.0, 1.0, 1.0) if seed % 2 else tuple(rng.uniform(0.5, 3.0, 3))
    score = score_masks(pred, ref, spacing)
    assert score.dice == pytest.approx(brute_dice(pred, ref), abs=DICE_TOL)
    assert score.dice == pytest.approx(monai_dice(pred, ref), abs=DICE_TOL)
    assert score.hd95 == pytest.approx(brute_hd(pred, ref, spacing, 95), abs=HD_TOL)
    assert score.hd95 == pytest.approx(monai_hd(pred, ref, spacing, 95), abs=HD_TOL)
    assert score.hd_max == pytest.approx(brute_hd(pred, ref, spacing, None), abs=HD_TOL)
    assert score.hd_max == pytest.approx(monai_hd(pred, ref, spacing, None), abs=HD_TOL)
    assert score.pred_voxels == pred.sum() and score.ref_voxels == ref.sum()
    assert score.pred_volume_mm3 == pytest.approx(pred.sum() * np.prod(spacing))


@pytest.mark.parametrize("seed", range(4))
def test_random_masks_2d_match_monai_and_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(s) for s in rng.integers(20, 60, 2))
    pred, ref = random_pair(rng, shape)
    spacing = tuple(rng.uniform(0.5, 2.0, 2))
    score = score_masks(pred, ref, spacing)
    assert score.dice == pytest.approx(brute_dice(pred, ref), abs=DICE_TOL)
    assert score.hd95 == pytest.approx(brute_hd(pred, ref, spacing, 95), abs=HD_TOL)
    assert score.hd95 == pytest.approx(monai_hd(pred, ref, spacing, 95), abs=HD_TOL)
    assert score.hd_max == pytest.approx(monai_hd(pred, ref, spacing, None), abs=HD_TOL)


def test_surface_matches_brute_force_and_monai_edges():
    from monai.metrics.utils import get_mask_edges

    rng = np.random.default_rng(7)
    for _ in range(5):
        shape = tuple(int(s) for s in rng.integers(5, 15, 3))
        mask = rng.random(shape) < 0.6  # ragged, touching every border
        other = rng.random(shape) < 0.3
        np.testing.assert_array_equal(mask_surface(mask), brute_surface(mask))
        edges, _ = get_mask_edges(mask, other, crop=False)
        np.testing.assert_array_equal(mask_surface(mask), edges)


def test_directed_distances_are_per_surface_voxel():
    a = np.zeros((10, 10), bool)
    b = a.copy()
    a[2, 2] = True
    b[2, 6] = True
    b[8, 2] = True
    d_ab, d_ba = surface_distances(a, b, (1.0, 2.0))
    np.testing.assert_allclose(d_ab, [6.0])  # nearest: 6 rows * 1 mm, not 4 columns * 2 mm
    np.testing.assert_allclose(sorted(d_ba), [6.0, 8.0])


def test_percentile_is_of_each_direction_not_pooled():
    # one far outlier voxel in pred: pooled percentile (medpy) and per-direction differ
    ref = np.zeros((40, 40), bool)
    ref[10:30, 10:30] = True
    pred = ref.copy()
    pred[0:2, 38:40] = True  # far outlier
    d_pr, d_rp = surface_distances(pred, ref)
    expected = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    assert hausdorff(pred, ref, None, 95) == pytest.approx(expected, abs=HD_TOL)
    pooled = np.percentile(np.concatenate([d_pr, d_rp]), 95)
    assert abs(expected - pooled) > 0.1  # the choice matters on this mask


def test_brats_empty_rules_use_the_image_diagonal():
    shape = (240, 240, 155)
    empty = np.zeros(shape, bool)
    some = empty.copy()
    some[100:110, 100:110, 70:75] = True
    assert image_diagonal_mm(shape, (1, 1, 1)) == pytest.approx(373.13, abs=0.01)
    assert dice(empty, empty) == 1.0
    assert hausdorff(empty, empty, (1, 1, 1)) == 0.0
    assert dice(some, empty) == 0.0 and dice(empty, some) == 0.0
    assert hausdorff(some, empty, (1, 1, 1)) == pytest.approx(373.13, abs=0.01)
    assert hausdorff(empty, some, (1, 1, 1), None) == pytest.approx(373.13, abs=0.01)
    diag = math.sqrt((240 * 0.5) ** 2 + (240 * 0.5) ** 2 + (155 * 2.0) ** 2)
    assert hausdorff(empty, some, (0.5, 0.5, 2.0)) == pytest.approx(diag)
    s = score_masks(empty, some, (1, 1, 1))
    assert (s.dice, s.empty, s.pred_voxels, s.ref_voxels) == (0.0, "pred_empty", 0, 500)
    s = score_masks(some, empty)
    assert s.empty == "ref_empty" and s.hd_max == pytest.approx(373.13, abs=0.01)
    s = score_masks(empty, empty)
    assert (s.dice, s.hd95, s.hd_max, s.empty) == (1.0, 0.0, 0.0, "both_empty")


def test_crop_does_not_change_the_result():
    rng = np.random.default_rng(3)
    pred, ref = random_pair(rng, (16, 18, 14))
    big_p = np.zeros((60, 50, 40), bool)
    big_r = big_p.copy()
    big_p[30:46, 20:38, 10:24] = pred
    big_r[30:46, 20:38, 10:24] = ref
    small = score_masks(pred, ref, (1.0, 1.5, 2.0))
    big = score_masks(big_p, big_r, (1.0, 1.5, 2.0))
    assert big.dice == pytest.approx(small.dice, abs=DICE_TOL)
    assert big.hd95 == pytest.approx(small.hd95, abs=HD_TOL)
    assert big.hd_max == pytest.approx(small.hd_max, abs=HD_TOL)


def test_score_label_maps_regions_follow_the_convention():
    rng = np.random.default_rng(11)
    shape = (30, 28, 20)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for label_map, shift in ((ref, 0), (pred, 2)):
        wt = blob(shape, (15 + shift, 14, 10), (9, 8, 6), rng, 0.1)
        tc = blob(shape, (15, 14 + shift, 10), (5, 5, 4), rng, 0.1) & wt
        et = blob(shape, (15, 14, 10 + shift / 2), (3, 3, 2), rng, 0.1) & tc
        label_map[wt] = 2
        label_map[tc] = 1
        label_map[et] = 4
    pred[0, 0, 0] = 3  # a label in no region: ignored by every region
    spacing = (1.0, 1.2, 2.0)
    scores = score_label_maps(pred, ref, spacing)
    assert [s.region for s in scores] == ["WT", "TC", "ET"]
    for s, labels in zip(scores, ((1, 2, 4), (1, 4), (4,)), strict=True):
        p, r = np.isin(pred, labels), np.isin(ref, labels)
        assert isinstance(s, RegionScore)
        assert s.dice == pytest.approx(monai_dice(p, r), abs=DICE_TOL)
        assert s.hd95 == pytest.approx(monai_hd(p, r, spacing, 95), abs=HD_TOL)
        assert s.hd_max == pytest.approx(monai_hd(p, r, spacing, None), abs=HD_TOL)
        assert s.pred_voxels == p.sum() and s.ref_voxels == r.sum()
    only_et = score_label_maps(pred, ref, spacing, regions=("ET",))
    assert only_et[0] == scores[2]


def test_score_label_maps_empty_regions_and_to_dict():
    ref = np.zeros((10, 10, 10), np.uint8)
    pred = ref.copy()
    ref[2:5, 2:5, 2:5] = 2  # WT only: TC and ET empty in the reference
    pred[2:5, 2:5, 2:5] = 2
    pred[7, 7, 7] = 4  # ET (so also TC) only in the prediction
    wt, tc, et = score_label_maps(pred, ref, (1, 1, 1))
    assert tc.empty == "ref_empty" and tc.dice == 0.0
    _, tc_none, _ = score_label_maps(np.where(pred == 4, 0, pred), ref, (1, 1, 1))
    assert tc_none.empty == "both_empty" and tc_none.dice == 1.0 and tc_none.hd95 == 0.0
    assert et.empty == "ref_empty" and et.dice == 0.0
    assert et.hd95 == pytest.approx(math.sqrt(300))
    assert wt.empty == "none" and wt.dice == pytest.approx(2 * 27 / (28 + 27))
    assert set(wt.to_dict()) >= {"region", "dice", "hd95", "hd_max", "pred_voxels", "empty"}


def test_bad_input_is_refused_with_a_reason():
    a = np.zeros((5, 5, 5), bool)
    with pytest.raises(ValueError, match="differs"):
        dice(a, np.zeros((5, 5, 4), bool))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff(a, a, (1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="percentile"):
        hausdorff(a, a, None, 120)
    with pytest.raises(ValueError, match="2D or 3D"):
        dice(np.zeros(5, bool), np.zeros(5, bool))
    with pytest.raises(ValueError, match="not defined"):
        score_label_maps(a.astype(np.uint8), a.astype(np.uint8), regions=("XX",))
