"""Points, boxes, polygons <-> masks; coordinate systems; validation statuses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from GliomaCompareLib import geometry as g
from GliomaCompareLib.geometry import Box, Point, Polygon


def ellipse(shape, cx, cy, rx, ry, angle=0.0):
    rows, cols = np.indices(shape)
    x, y = cols - cx, rows - cy
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def c_shape(shape=(40, 40)):
    mask = ellipse(shape, 20, 20, 14, 14) & ~ellipse(shape, 20, 20, 8, 8)
    mask[14:27, 20:] = False  # open to the right: the centroid is outside the mask
    return mask


def random_masks(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = rng.integers(20, 60, 2)
        m = ellipse(
            (h, w),
            rng.uniform(0, w),
            rng.uniform(0, h),
            rng.uniform(1, w / 2),
            rng.uniform(1, h / 2),
            rng.uniform(0, math.pi),
        )
        m |= rng.random((h, w)) < 0.01  # scattered specks, some at the border
        if not m.any():
            m[h // 2, w // 2] = True
        out.append(m)
    return out


# --------------------------------------------------------------------------- mask -> geometry


def test_centroid_and_inside_point():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True  # rows 2..4, cols 3..8
    assert g.mask_centroid(mask) == Point(5.5, 3.0)
    p = g.inside_point(mask)
    assert g.point_in_mask(p, mask) and p.y == 3.0
    ring = c_shape()
    centre = g.mask_centroid(ring)
    assert not g.point_in_mask(centre, ring)  # the reason inside_point exists
    for m in [ring, *random_masks(20)]:
        q = g.inside_point(m, pixel_spacing=(0.8, 1.7))
        assert g.point_in_mask(q, m)
        assert q.x == int(q.x) and q.y == int(q.y)
    full = np.ones((5, 7), bool)  # the image border counts as background
    assert g.inside_point(full) == Point(3.0, 2.0)
    with pytest.raises(ValueError, match="empty"):
        g.inside_point(np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="empty"):
        g.mask_centroid(np.zeros((4, 4), bool))


def test_mask_box_round_trip():
    for m in random_masks(20, seed=1):
        box = g.mask_box(m)
        filled = g.box_to_mask(box, m.shape)
        assert (filled >= m).all()  # contains the mask
        rows, cols = np.nonzero(m)
        assert (box.x0, box.x1, box.y0, box.y1) == (cols.min(), cols.max(), rows.min(), rows.max())
        assert filled.sum() == box.width * box.height
    with pytest.raises(ValueError, match="empty"):
        g.mask_box(np.zeros((3, 3), bool))


@pytest.mark.parametrize("k", [4, 5, 6, 8, 16])
def test_mask_polygon_contains_the_mask_with_at_most_k_vertices(k):
    for m in [c_shape(), *random_masks(25, seed=k)]:
        poly = g.mask_polygon(m, max_vertices=k)
        pts = poly.as_array()
        assert 3 <= len(pts) <= k
        assert (g.polygon_to_mask(poly, m.shape) >= m).all()
        h, w = m.shape  # vertices stay inside the image
        assert pts[:, 0].min() >= -0.5 - 1e-9 and pts[:, 0].max() <= w - 0.5 + 1e-9
        assert pts[:, 1].min() >= -0.5 - 1e-9 and pts[:, 1].max() <= h - 0.5 + 1e-9
        _, status = g.validate_polygon(poly, w, h, max_vertices=k)
        assert status == "ok"


def test_mask_polygon_is_tight_for_a_convex_blob():
    from GliomaCompareLib.metrics.segmentation import dice

    m = ellipse((80, 90), 45, 38, 25, 15, 0.4)
    box_dice = dice(g.box_to_mask(g.mask_box(m), m.shape), m)
    d8 = dice(g.polygon_to_mask(g.mask_polygon(m, 8), m.shape), m)
    d16 = dice(g.polygon_to_mask(g.mask_polygon(m, 16), m.shape), m)
    assert box_dice < d8 <= d16 + 1e-9
    assert d8 > 0.93 and d16 > 0.97
    single = np.zeros((9, 9), bool)
    single[4, 4] = True
    assert g.polygon_to_mask(g.mask_polygon(single, 4), single.shape).sum() == 1
    with pytest.raises(ValueError, match=">= 4"):
        g.mask_polygon(m, 3)


# --------------------------------------------------------------------------- geometry -> mask


def test_box_and_polygon_masks():
    box = Box(2, 1, 4, 3)
    m = g.box_to_mask(box, (6, 8))
    expected = np.zeros((6, 8), bool)
    expected[1:4, 2:5] = True
    np.testing.assert_array_equal(m, expected)
    # the same region as a polygon through the outer pixel corners
    np.testing.assert_array_equal(g.polygon_to_mask(Polygon.from_array(box.corners()), (6, 8)), m)
    # a box partly outside is cut at the image; inverted gives nothing
    assert g.box_to_mask(Box(-5, -5, 1, 1), (6, 8)).sum() == 4
    assert not g.box_to_mask(Box(4, 1, 2, 3), (6, 8)).any()
    # right triangle with legs along the axes: pixels on the hypotenuse are included
    tri = Polygon(((0, 0), (4, 0), (0, 4)))
    m = g.polygon_to_mask(tri, (6, 6))
    rows, cols = np.nonzero(m)
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == {
        (r, c) for r in range(5) for c in range(5) if r + c <= 4
    }
    assert not g.polygon_to_mask(Polygon(((0, 0), (3, 3))), (5, 5)).any()


def test_polygon_mask_agrees_with_matplotlib_away_from_edges():
    from matplotlib.path import Path as MplPath

    rng = np.random.default_rng(5)
    for _ in range(10):
        angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
        radii = rng.uniform(5, 15, 7)
        pts = np.stack([20 + radii * np.cos(angles), 20 + radii * np.sin(angles)], axis=1)
        poly = Polygon.from_array(pts)
        ours = g.polygon_to_mask(poly, (40, 40))
        rows, cols = np.indices((40, 40))
        centres = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(float)
        path = MplPath(pts)
        theirs = path.contains_points(centres).reshape(40, 40)
        # compare only where the pixel centre is clearly away from the outline
        near = np.zeros(len(centres), bool)
        for i in range(len(pts)):
            a, b = pts[i], pts[(i + 1) % len(pts)]
            t = np.clip(((centres - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
            near |= np.linalg.norm(centres - (a + t[:, None] * (b - a)), axis=1) < 1e-6
        np.testing.assert_array_equal(ours.ravel()[~near], theirs[~near.reshape(40, 40)].ravel())


def test_point_disc_area_and_anisotropy():
    m = g.point_to_mask(Point(50, 40), (100, 120), radius_mm=10.0, pixel_spacing=(1.0, 1.0))
    assert m.sum() == pytest.approx(math.pi * 100, rel=0.03)
    aniso = g.point_to_mask(Point(50, 40), (100, 120), radius_mm=10.0, pixel_spacing=(0.5, 2.0))
    rows, cols = np.nonzero(aniso)
    assert cols.max() - 50 == 20 and rows.max() - 40 == 5  # 10 mm = 20 cols = 5 rows
    assert g.point_to_mask(Point(3, 3), (7, 7), 0.0).sum() == 1
    with pytest.raises(ValueError, match="radius"):
        g.point_to_mask(Point(3, 3), (7, 7), -1.0)


def test_geometry_to_mask_dispatch():
    shape = (20, 20)
    assert g.geometry_to_mask(Box(1, 1, 2, 2), shape).sum() == 4
    assert g.geometry_to_mask(Polygon(((0, 0), (0, 3), (3, 3), (3, 0))), shape).sum() == 16
    assert g.geometry_to_mask(Point(5, 5), shape, radius_mm=1.0).sum() == 5
    with pytest.raises(TypeError):
        g.geometry_to_mask((1, 2), shape)


# --------------------------------------------------------------------------- points


def test_point_in_mask_rounds_to_the_pixel_square():
    m = np.zeros((5, 5), bool)
    m[2, 3] = True
    assert g.point_in_mask(Point(3.0, 2.0), m)
    assert g.point_in_mask(Point(3.49, 1.51), m)
    assert not g.point_in_mask(Point(3.51, 2.0), m)
    assert not g.point_in_mask(Point(-3, 2), m)
    assert not g.point_in_mask(Point(float("nan"), 2), m)
    edge = np.zeros((5, 5), bool)
    edge[4, 4] = True
    assert g.point_in_mask(Point(4.5, 4.5), edge)  # the image's far edge is still inside


def test_distances_and_score_point_against_slice_geometry():
    from GliomaCompareLib.data.slices import SliceGeometry

    affine = np.diag([-0.8, -1.3, 2.5, 1.0])  # anisotropic, LPS-stored like many scanners
    affine[:3, 3] = [90.0, 120.0, -60.0]
    geo = SliceGeometry.axial(affine, (40, 30, 12), 6)
    spacing = geo.pixel_spacing
    p, q = Point(3.0, 4.0), Point(17.0, 25.0)
    ras = geo.pixel_to_ras([p.x, q.x], [p.y, q.y])
    assert g.point_distance_mm(p, q, spacing) == pytest.approx(np.linalg.norm(ras[0] - ras[1]))

    ref = np.zeros((geo.height, geo.width), bool)
    ref[10:16, 20:30] = True  # rows 10..15, cols 20..29
    inside = g.score_point(Point(24, 12), ref, spacing, radius_mm=3.0)
    assert inside.inside and inside.distance_to_tumour_mm == 0.0
    centre = g.mask_centroid(ref)
    assert inside.distance_to_centre_mm == pytest.approx(
        g.point_distance_mm(Point(24, 12), centre, spacing)
    )
    disc = g.point_to_mask(Point(24, 12), ref.shape, 3.0, spacing)
    assert inside.dice == pytest.approx(2 * (disc & ref).sum() / (disc.sum() + ref.sum()))
    outside = g.score_point(Point(5, 12), ref, spacing)
    assert not outside.inside
    assert outside.distance_to_tumour_mm == pytest.approx(15 * spacing[0])
    assert g.score_point(Point(5, 12), ref, spacing).to_dict()["radius_mm"] == 10.0
    with pytest.raises(ValueError, match="empty"):
        g.score_point(Point(1, 1), np.zeros((4, 4), bool))


# --------------------------------------------------------------------------- coordinate systems


def test_coordinate_systems_known_values():
    w, h = 240, 200
    assert g.to_pixels(Point(0.5, 0.5), "normalized", w, h) == Point(119.5, 99.5)
    assert g.to_pixels(Point(500, 500), "per_mille", w, h) == Point(119.5, 99.5)
    assert g.to_pixels(Point(0, 0), "normalized", w, h) == Point(-0.5, -0.5)  # image edge
    assert g.to_pixels(Point(7, 8), "pixel", w, h) == Point(7, 8)
    # a box converts by its edges: [0, 1] is the whole image, pixels 0..W-1
    assert g.to_pixels(Box(0, 0, 1, 1), "normalized", w, h) == Box(0, 0, w - 1, h - 1)
    assert g.to_pixels(Box(250, 0, 750, 1000), "per_mille", w, h) == Box(60, 0, 179, h - 1)
    assert g.box_to_mask(g.to_pixels(Box(0, 0, 0.5, 1), "normalized", w, h), (h, w)).sum() == (
        w // 2 * h
    )
    np.testing.assert_allclose(
        g.to_pixels([[0, 0], [1000, 1000]], "per_mille", w, h), [[-0.5, -0.5], [w - 0.5, h - 0.5]]
    )
    with pytest.raises(ValueError, match="coordinate system"):
        g.to_pixels(Point(1, 1), "percent", w, h)
    with pytest.raises(ValueError, match="pairs"):
        g.to_pixels([1, 2, 3], "pixel", w, h)


@pytest.mark.parametrize("system", ["pixel", "normalized", "per_mille"])
def test_coordinate_round_trips(system):
    rng = np.random.default_rng(0)
    w, h = 173, 211
    for _ in range(20):
        pt = Point(*rng.uniform(-0.5, 170, 2))
        back = g.to_pixels(g.from_pixels(pt, system, w, h), system, w, h)
        assert back.x == pytest.approx(pt.x) and back.y == pytest.approx(pt.y)
        x0, y0 = rng.uniform(0, 100, 2)
        box = Box(x0, y0, x0 + rng.uniform(0, 50), y0 + rng.uniform(0, 50))
        back = g.to_pixels(g.from_pixels(box, system, w, h), system, w, h)
        np.testing.assert_allclose(back.as_tuple(), box.as_tuple())
        poly = Polygon.from_array(rng.uniform(0, 170, (5, 2)))
        back = g.to_pixels(g.from_pixels(poly, system, w, h), system, w, h)
        np.testing.assert_allclose(back.as_array(), poly.as_array())
    if system != "pixel":
        top = 1.0 if system == "normalized" else 1000.0
        assert g.from_pixels(Box(0, 0, w - 1, h - 1), system, w, h).as_tuple() == (0, 0, top, top)


# --------------------------------------------------------------------------- validation


def test_validate_point_statuses():
    w, h = 10, 8
    assert g.validate_point(Point(3, 4), w, h) == (Point(3, 4), "ok")
    assert g.validate_point(Point(9.5, 7.5), w, h)[1] == "ok"  # the far image edge
    assert g.validate_point(Point(12, 4), w, h) == (None, "out_of_bounds")
    assert g.validate_point(Point(12, -3), w, h, clip=True) == (Point(9.5, -0.5), "clipped")
    assert g.validate_point(Point(math.nan, 1), w, h) == (None, "not_finite")


def test_validate_box_statuses():
    w, h = 10, 8
    assert g.validate_box(Box(1, 1, 5, 5), w, h) == (Box(1, 1, 5, 5), "ok")
    assert g.validate_box(Box(3, 3, 3, 3), w, h)[1] == "ok"  # one pixel
    assert g.validate_box(Box(5, 1, 1, 5), w, h) == (None, "inverted")  # never swapped
    assert g.validate_box(Box(1, 5, 5, 1), w, h) == (None, "inverted")
    # from normalized [0.3, 0.3] -> zero width
    zero = g.to_pixels(Box(0.3, 0.1, 0.3, 0.5), "normalized", w, h)
    assert g.validate_box(zero, w, h) == (None, "degenerate")
    # 0.8 px wide, [2.1, 2.9): no pixel centre inside
    assert g.validate_box(Box(2.6, 1, 2.4, 5), w, h) == (None, "degenerate")
    assert g.validate_box(Box(math.inf, 1, 2, 5), w, h) == (None, "not_finite")
    assert g.validate_box(Box(20, 1, 25, 5), w, h) == (None, "out_of_bounds")
    assert g.validate_box(Box(-4, -2, 3, 3), w, h) == (Box(0, 0, 3, 3), "clipped")
    assert g.validate_box(Box(-4, -2, 3, 3), w, h, clip=False) == (None, "partly_outside")
    for status in ("ok", "clipped", "inverted", "degenerate", "out_of_bounds", "not_finite"):
        assert status in g.GEOMETRY_STATUSES


def test_validate_polygon_statuses():
    w, h = 20, 20
    square = Polygon(((2, 2), (8, 2), (8, 8), (2, 8)))
    assert g.validate_polygon(square, w, h) == (square, "ok")
    closed = Polygon((*square.points, (2, 2)))  # repeated closing vertex: same shape
    assert g.validate_polygon(closed, w, h) == (square, "ok")
    assert g.validate_polygon(square, w, h, max_vertices=3) == (None, "too_many_vertices")
    assert g.validate_polygon(Polygon(((1, 1), (5, 5))), w, h) == (None, "too_few_vertices")
    bowtie = Polygon(((2, 2), (8, 8), (8, 2), (2, 8)))
    assert g.validate_polygon(bowtie, w, h) == (None, "self_intersecting")
    line = Polygon(((1, 1), (3, 3), (6, 6)))
    assert g.validate_polygon(line, w, h)[1] in ("degenerate", "self_intersecting")
    sliver = Polygon(((2.1, 2.1), (2.9, 2.1), (2.5, 2.4)))  # no pixel centre inside
    assert g.validate_polygon(sliver, w, h) == (None, "degenerate")
    assert g.validate_polygon(Polygon(((1, 1), (math.nan, 2), (3, 1))), w, h) == (
        None,
        "not_finite",
    )
    far = Polygon(((30, 30), (40, 30), (40, 40)))
    assert g.validate_polygon(far, w, h) == (None, "out_of_bounds")
    big = Polygon(((-5, 5), (10, 5), (10, 15), (-5, 15)))
    clipped, status = g.validate_polygon(big, w, h)
    assert status == "clipped"
    assert clipped.as_array()[:, 0].min() == -0.5
    np.testing.assert_array_equal(
        g.polygon_to_mask(clipped, (h, w)), g.polygon_to_mask(big, (h, w))
    )
    assert g.validate_polygon(big, w, h, clip=False) == (None, "partly_outside")
