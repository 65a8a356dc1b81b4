"""Axial slices: radiological orientation, exact pixel <-> voxel <-> RAS mapping, selection."""

from __future__ import annotations

import numpy as np
import pytest

from GliomaCompareLib.data import Case, SliceGeometry, SliceRule, WindowSpec, case_slices
from GliomaCompareLib.data.conventions import load_convention
from GliomaCompareLib.data.slices import (
    LABEL_FREE_MODES,
    SLICE_MODES,
    check_slice_indices,
    label_free_rule,
    parse_slice_list,
    render_slice,
    select_slices,
    window_volume,
)

BRATS = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239], [0, 0, 1.0, 0], [0, 0, 0, 1]])
RAS = np.diag([0.9, 1.1, 2.5, 1.0])
_rot = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]], float)  # i -> -y ... a permuted, flipped grid
PERMUTED = np.eye(4)
PERMUTED[:3, :3] = _rot @ np.diag([1.2, 0.8, 3.0])
PERMUTED[:3, 3] = [10.0, -20.0, 5.0]
# a slightly oblique grid (5 degrees about S): the mapping must stay exact
_t = np.deg2rad(5)
OBLIQUE = np.eye(4)
OBLIQUE[:3, :3] = np.array(
    [[np.cos(_t), -np.sin(_t), 0], [np.sin(_t), np.cos(_t), 0], [0, 0, 1]]
) @ np.diag([1.0, 1.0, 1.5])
AFFINES = {"brats": BRATS, "ras": RAS, "permuted": PERMUTED, "oblique": OBLIQUE}
SHAPE = (20, 16, 9)


def _ras_extreme_voxel(affine, shape, k):
    """Voxel on slice k with the largest x + y in RAS: the patient's right-anterior corner."""
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    ijk = np.stack([ii, jj, np.full_like(ii, k)], -1).reshape(-1, 3)
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    return tuple(ijk[np.argmax(ras[:, 0] + ras[:, 1])])


@pytest.mark.parametrize("name", ["brats", "ras", "oblique"])
def test_radiological_orientation(name):
    affine = AFFINES[name]
    geom = SliceGeometry.axial(affine, SHAPE, 4)
    vol = np.zeros(SHAPE)
    vol[_ras_extreme_voxel(affine, SHAPE, 4)] = 1  # patient's right, anterior
    image = geom.extract(vol)
    assert image.shape == (SHAPE[1], SHAPE[0])
    r, c = np.argwhere(image == 1)[0]
    assert (r, c) == (0, 0), "right-anterior must be top-left (radiological view)"
    # moving right on the image goes toward the patient's left (RAS x decreases)
    ras = geom.pixel_to_ras([0, 5], [3, 3])
    assert ras[1, 0] < ras[0, 0]
    # moving down goes posterior (RAS y decreases)
    ras = geom.pixel_to_ras([3, 3], [0, 5])
    assert ras[1, 1] < ras[0, 1]


def test_brats_affine_is_a_plain_transpose():
    geom = SliceGeometry.axial(BRATS, SHAPE, 2)
    vol = np.random.default_rng(0).normal(size=SHAPE)
    np.testing.assert_array_equal(geom.extract(vol), vol[:, :, 2].T)
    assert not geom.flip_col and not geom.flip_row


@pytest.mark.parametrize("name", list(AFFINES))
def test_mapping_round_trips_exactly(name):
    affine = AFFINES[name]
    shape = SHAPE if name != "permuted" else (16, 20, 9)
    rng = np.random.default_rng(1)
    for k in (0, 3, shape[2] - 1):
        geom = SliceGeometry.axial(affine, shape, k)
        cols = rng.uniform(0, geom.width - 1, 50)
        rows = rng.uniform(0, geom.height - 1, 50)
        voxels = geom.pixel_to_voxel(cols, rows)
        assert np.all(voxels[:, geom.slice_axis] == k)
        back = geom.voxel_to_pixel(voxels)
        np.testing.assert_allclose(back[:, 0], cols, atol=1e-9)
        np.testing.assert_allclose(back[:, 1], rows, atol=1e-9)
        np.testing.assert_allclose(back[:, 2], 0, atol=1e-9)
        ras = geom.pixel_to_ras(cols, rows)
        np.testing.assert_allclose(ras, voxels @ affine[:3, :3].T + affine[:3, 3], atol=1e-9)
        np.testing.assert_allclose(geom.ras_to_pixel(ras)[:, :2], np.c_[cols, rows], atol=1e-9)


@pytest.mark.parametrize("name", list(AFFINES))
def test_pixel_value_matches_voxel_value(name):
    """Integer pixel (c, r) of the extracted image holds the voxel pixel_to_voxel names."""
    affine = AFFINES[name]
    shape = SHAPE if name != "permuted" else (16, 20, 9)
    vol = np.random.default_rng(2).normal(size=shape)
    geom = SliceGeometry.axial(affine, shape, 5)
    image = geom.extract(vol)
    assert image.shape == (geom.height, geom.width)
    for c, r in [(0, 0), (geom.width - 1, 0), (3, geom.height - 2), (7, 5)]:
        i, j, k = geom.pixel_to_voxel(c, r).round().astype(int)
        assert image[r, c] == vol[i, j, k]
    mask = np.zeros((geom.height, geom.width), bool)
    mask[2:5, 1:4] = True
    back = geom.insert(mask)
    assert back.shape == shape and back.sum() == mask.sum()
    np.testing.assert_array_equal(geom.extract(back), mask)


def test_geometry_serialises():
    geom = SliceGeometry.axial(PERMUTED, (16, 20, 9), 3)
    again = SliceGeometry.from_dict(geom.to_dict())
    np.testing.assert_allclose(again.pixel_to_ras(3.5, 2.25), geom.pixel_to_ras(3.5, 2.25))


def test_out_of_range_slice_is_refused():
    with pytest.raises(ValueError, match="outside"):
        SliceGeometry.axial(BRATS, SHAPE, 9)


def _tumour_volume():
    region = np.zeros(SHAPE, bool)
    areas = [0, 2, 6, 12, 20, 30, 12, 4, 0]  # pixels per slice along k
    for k, a in enumerate(areas):
        plane = np.zeros(SHAPE[0] * SHAPE[1], bool)
        plane[:a] = True
        region[:, :, k] = plane.reshape(SHAPE[:2])
    return region


def test_selection_rules():
    region = _tumour_volume()
    brain = np.ones(SHAPE, bool)
    assert select_slices(BRATS, region, brain, SliceRule(min_area_mm2=10)) == [3, 4, 5, 6]
    assert select_slices(BRATS, region, brain, SliceRule(min_area_mm2=1)) == [1, 2, 3, 4, 5, 6, 7]
    # spacing counts: 2.5 mm^2 pixels make area 4 px = 10 mm^2
    assert select_slices(np.diag([2.5, 1, 1, 1]), region, brain, SliceRule(min_area_mm2=12))[0] == 2
    assert select_slices(BRATS, region, brain, SliceRule(mode="largest", max_slices=2)) == [4, 5]
    thinned = select_slices(BRATS, region, brain, SliceRule(min_area_mm2=1, max_slices=3))
    assert len(thinned) == 3 and 5 in thinned  # keeps the largest
    assert select_slices(BRATS, None, brain, SliceRule(mode="brain", stride=3)) == [0, 3, 6]
    with pytest.raises(ValueError, match="label map"):
        select_slices(BRATS, None, brain, SliceRule())
    with pytest.raises(ValueError, match="max_slices"):
        SliceRule(mode="largest")


def test_window_and_render():
    vol = np.zeros((10, 10, 3), np.float32)
    vol[2:8, 2:8] = np.linspace(100, 300, 36 * 3).reshape(6, 6, 3)
    lo, hi = window_volume(vol, WindowSpec(lower=0, upper=100))
    assert (lo, hi) == (100, 300)
    rgb = render_slice(vol[:, :, 1], lo, hi)
    assert rgb.dtype == np.uint8 and rgb.shape == (10, 10, 3)
    assert rgb[0, 0, 0] == 0 and (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb.max() <= 255


def test_case_slices_render_what_the_vlm_sees():
    conv = load_convention("brats2020")
    rng = np.random.default_rng(3)
    image = np.zeros((4, *SHAPE), np.float32)
    image[:, 2:18, 1:15, :] = rng.uniform(100, 200, size=(4, 16, 14, 9))
    label = np.zeros(SHAPE, np.uint8)
    label[5:12, 4:10, 2:7] = 2
    label[7:9, 6:8, 3:5] = 4
    case = Case("X", "HGG", image, label, BRATS, (1.0, 1.0, 1.0), conv.channels, conv)
    slices = case_slices(case, SliceRule(min_area_mm2=20, max_slices=3), WindowSpec())
    assert [s.index for s in slices] == [2, 4, 6]
    for s in slices:
        assert s.rgb.shape == (SHAPE[1], SHAPE[0], 3) and s.rgb.dtype == np.uint8
        assert s.area_mm2 == 42.0
        np.testing.assert_array_equal(s.region_mask, s.geometry.extract(label > 0))
    no_label = Case("Y", None, image, None, BRATS, (1.0, 1.0, 1.0), conv.channels, conv)
    assert len(case_slices(no_label, SliceRule(mode="brain"))) == 9


def _case_pair():
    conv = load_convention("brats2020")
    image = np.zeros((4, *SHAPE), np.float32)
    image[:, 2:18, 1:15, :] = 150.0
    label = np.zeros(SHAPE, np.uint8)
    label[5:12, 4:10, 2:7] = 2
    labelled = Case("X", "HGG", image, label, BRATS, (1.0, 1.0, 1.0), conv.channels, conv)
    unlabelled = Case("Y", None, image, None, BRATS, (1.0, 1.0, 1.0), conv.channels, conv)
    return labelled, unlabelled


def test_cnn_rule_reads_the_prediction_not_the_reference():
    labelled, _ = _case_pair()
    prediction = np.zeros(SHAPE, np.uint8)
    prediction[5:9, 4:8, 6] = 2  # the CNN sees most tumour on slice 6, some on 7
    prediction[5:7, 4:6, 7] = 1
    slices = case_slices(labelled, SliceRule(mode="cnn", max_slices=2), prediction=prediction)
    assert [s.index for s in slices] == [6, 7]
    # scoring still sees the reference region on those slices
    np.testing.assert_array_equal(
        slices[0].region_mask, slices[0].geometry.extract(labelled.label > 0)
    )
    assert (
        slices[1].region_mask.sum() == 0
    )  # slice 7 has no reference tumour: a label-free rule can pick it
    with pytest.raises(ValueError, match="X: slice rule 'cnn' needs the CNN's predicted label map"):
        case_slices(labelled, SliceRule(mode="cnn", max_slices=2))
    with pytest.raises(ValueError, match="X: the CNN prediction's shape"):
        case_slices(labelled, SliceRule(mode="cnn", max_slices=2), prediction=prediction[:-1])


def test_unlabelled_case_is_asked_on_label_free_slices():
    _, unlabelled = _case_pair()
    oracle = SliceRule(min_area_mm2=20, max_slices=3)
    brain = case_slices(unlabelled, oracle)
    assert len(brain) == 3 and all(s.region_mask is None for s in brain)
    assert brain[0].meta["rule"]["mode"] == "brain"
    assert brain[0].meta["fallback"] == "no reference labels: tumour_area replaced by brain"
    prediction = np.zeros(SHAPE, np.uint8)
    prediction[5:12, 4:10, 3] = 4
    cnn = case_slices(unlabelled, oracle, prediction=prediction)
    assert [s.index for s in cnn] == [3] and cnn[0].meta["rule"]["mode"] == "cnn"


def test_rules_say_whether_they_use_the_reference():
    assert SliceRule().oracle and SliceRule(mode="largest", max_slices=2).oracle
    assert not SliceRule(mode="brain").oracle and not SliceRule(mode="cnn").oracle
    assert SliceRule().describe().startswith("oracle slice selection (uses the reference labels)")
    assert "CNN's own prediction" in SliceRule(mode="cnn", max_slices=10).describe()
    assert label_free_rule(SliceRule(max_slices=4), True) == SliceRule(mode="cnn", max_slices=4)
    assert label_free_rule(SliceRule(mode="brain"), True) == SliceRule(mode="brain")
    with pytest.raises(ValueError, match="use tumour_area, largest, brain, cnn"):
        SliceRule(mode="random")


# --------------------------------------------------------------- slices chosen by the user
def test_given_slices_are_asked_as_they_are_on_an_unlabelled_case():
    labelled, unlabelled = _case_pair()
    rule = SliceRule(mode="given")
    slices = case_slices(unlabelled, rule, indices=[8, 0, 8])  # out of order, repeated
    assert [s.index for s in slices] == [0, 8]
    assert all(s.meta["rule"]["mode"] == "given" and "fallback" not in s.meta for s in slices)
    assert all(s.region_mask is None for s in slices)
    np.testing.assert_array_equal(
        slices[1].geometry.extract(unlabelled.flair), unlabelled.flair[:, :, 8].T[::-1, ::-1]
    )
    # on a labelled case the reference still scores the user's slice; it does not choose it
    scored = case_slices(labelled, rule, indices=[1])
    assert [s.index for s in scored] == [1] and scored[0].area_mm2 == 0.0
    assert scored[0].meta["rule"]["mode"] == "given"


def test_given_slices_outside_the_case_or_without_the_rule_are_refused():
    labelled, unlabelled = _case_pair()
    with pytest.raises(
        ValueError, match=r"Y: slice 9 is not an axial slice of the case \(0\.\.8\)"
    ):
        case_slices(unlabelled, SliceRule(mode="given"), indices=[3, 9])
    with pytest.raises(ValueError, match="Y: slice rule 'given' needs the slices the user chose"):
        case_slices(unlabelled, SliceRule(mode="given"))
    with pytest.raises(ValueError, match="X: slice indices are the user's slices"):
        case_slices(labelled, SliceRule(), indices=[3])
    with pytest.raises(ValueError, match="selects nothing itself"):
        select_slices(BRATS, None, None, SliceRule(mode="given"))
    with pytest.raises(ValueError, match="max_slices does not apply"):
        SliceRule(mode="given", max_slices=1)


def test_given_rule_is_label_free_and_says_the_user_chose():
    rule = SliceRule(mode="given")
    assert not rule.oracle and "given" in LABEL_FREE_MODES and "given" not in SLICE_MODES
    assert rule.describe() == "label-free: slices chosen by the user (no reference labels used)"
    assert label_free_rule(rule, False) is rule
    # the axis of the check follows the affine, as the slices do: here voxel axis i is S-I
    i_is_axial = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    assert check_slice_indices("P", [12, 0, 19], i_is_axial, SHAPE) == (0, 12, 19)
    with pytest.raises(
        ValueError, match=r"P: slice 20 is not an axial slice of the case \(0\.\.19\)"
    ):
        check_slice_indices("P", [20], i_is_axial, SHAPE)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("BraTS20_Training_001:40", ("BraTS20_Training_001", (40,))),
        ("a:b:3, 1,", ("a:b", (3, 1))),
        (" P :007", ("P", (7,))),
    ],
)
def test_slice_lists_are_read(text, expected):
    assert parse_slice_list(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("BraTS20_Training_001", "expected CASE:K"),
        (":3", "expected CASE:K"),
        ("P:", "no slice index after P:"),
        ("P:-1", "'-1' of P is not a whole number >= 0"),
        ("P:2.5", "'2.5' of P is not a whole number >= 0"),
    ],
)
def test_bad_slice_lists_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_slice_list(text)
