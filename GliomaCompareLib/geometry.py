"""Points, boxes and polygons on a slice image, and their conversion to and from masks.

Coordinate conventions (used everywhere in GliomaCompare for 2D geometry):

* An image is an array ``(H, W)`` = ``(rows, cols)``. A position is ``(x, y)`` = ``(col, row)``
  in **pixel coordinates**: pixel centres sit at integers, pixel ``(c, r)`` covers the square
  ``[c - 0.5, c + 0.5] x [r - 0.5, r + 0.5]``, and the image covers
  ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``. ``x`` grows to the right (the patient's left for a
  radiological axial slice from :class:`~GliomaCompareLib.data.slices.SliceGeometry`), ``y``
  grows downwards.
* ``pixel_spacing`` is ``(mm per column, mm per row)``, the order of
  :attr:`SliceGeometry.pixel_spacing <GliomaCompareLib.data.slices.SliceGeometry.pixel_spacing>`.
* A :class:`Box` ``(x0, y0, x1, y1)`` is an inclusive pixel extent: integer values name the first
  and last pixel inside; it covers the region ``[x0 - 0.5, x1 + 0.5] x [y0 - 0.5, y1 + 0.5]``.
* A :class:`Polygon` lists vertices in pixel coordinates; its mask is the pixels whose centre lies
  inside or on it (even-odd rule).
* Other systems a model may answer in (:func:`to_pixels` / :func:`from_pixels`):
  ``"normalized"`` in [0, 1] and ``"per_mille"`` in [0, 1000] (Qwen-style), both measured from
  the image's left / top *edge*: ``x_pixel = v / scale * W - 0.5`` for a point, and for a box the
  edges map, ``x0 = v0 / scale * W``, ``x1 = v1 / scale * W - 1`` (so ``[0, 1]`` is the whole
  image, pixels ``0 .. W - 1``).

Validation never fixes silently: :func:`validate_point`, :func:`validate_box` and
:func:`validate_polygon` return ``(geometry_or_None, status)`` with a status from
:data:`GEOMETRY_STATUSES`; when they clip, the status is ``"clipped"``. Whether a geometry lies so far
beyond the image that it should be refused rather than clipped is :func:`beyond_image`'s
question (tolerance :data:`OUTSIDE_TOLERANCE` of the side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np

from GliomaCompareLib.masks import dice, mask_surface

__all__ = [
    "COORDINATE_SYSTEMS",
    "GEOMETRY_STATUSES",
    "OUTSIDE_TOLERANCE",
    "Box",
    "Geometry",
    "Overshoot",
    "Point",
    "PointScore",
    "Polygon",
    "beyond_image",
    "box_to_mask",
    "from_pixels",
    "geometry_to_mask",
    "inside_point",
    "mask_box",
    "mask_centroid",
    "mask_polygon",
    "outside_tolerance_px",
    "point_distance_mm",
    "point_in_mask",
    "point_to_mask",
    "polygon_hull_mask",
    "polygon_to_mask",
    "score_point",
    "to_pixels",
    "validate_box",
    "validate_point",
    "validate_polygon",
]

#: Coordinate systems understood by :func:`to_pixels` / :func:`from_pixels` and their scale.
COORDINATE_SYSTEMS: dict[str, float | None] = {
    "pixel": None,
    "normalized": 1.0,
    "per_mille": 1000.0,
}

#: Every status a ``validate_*`` function can return.
GEOMETRY_STATUSES: tuple[str, ...] = (
    "ok",  # valid as given
    "clipped",  # partly outside the image; clipped to it (the geometry returned is the clipped one)
    "partly_outside",  # partly outside the image and clip=False: rejected
    "out_of_bounds",  # entirely outside the image: rejected
    "not_finite",  # a NaN or infinite coordinate: rejected
    "inverted",  # box with x1 < x0 or y1 < y0 (edges crossed): rejected, never swapped
    "degenerate",  # box or polygon of zero area, or covering no pixel centre: rejected
    "too_few_vertices",  # polygon with fewer than 3 distinct vertices: rejected
    "too_many_vertices",  # polygon with more vertices than allowed: rejected, never simplified
    "self_intersecting",  # polygon whose edges cross: rejected
)

_EPS = 1e-9


@dataclass(frozen=True)
class Point:
    """A position ``(x, y)`` = ``(col, row)`` in pixel coordinates (pixel centres at integers)."""

    x: float
    y: float

    def as_tuple(self) -> tuple[float, float]:
        return (float(self.x), float(self.y))

    def to_dict(self) -> dict:
        return {"type": "point", "x": float(self.x), "y": float(self.y)}


@dataclass(frozen=True)
class Box:
    """An axis-aligned box, the inclusive pixel extent ``x0..x1`` (cols) by ``y0..y1`` (rows).

    It covers the region ``[x0 - 0.5, x1 + 0.5] x [y0 - 0.5, y1 + 0.5]`` in pixel coordinates;
    a valid box has ``x0 <= x1`` and ``y0 <= y1`` (checked by :func:`validate_box`, not here).
    """

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        """Width in pixels (``x1 - x0 + 1``)."""
        return float(self.x1 - self.x0 + 1)

    @property
    def height(self) -> float:
        """Height in pixels (``y1 - y0 + 1``)."""
        return float(self.y1 - self.y0 + 1)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (float(self.x0), float(self.y0), float(self.x1), float(self.y1))

    def corners(self) -> np.ndarray:
        """The four corners of the covered region, ``(4, 2)`` ``(x, y)``, clockwise on screen."""
        a, b = self.x0 - 0.5, self.x1 + 0.5
        c, d = self.y0 - 0.5, self.y1 + 0.5
        return np.array([[a, c], [b, c], [b, d], [a, d]], dtype=float)

    def to_dict(self) -> dict:
        return {"type": "box", "x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1}


@dataclass(frozen=True)
class Polygon:
    """A closed polygon, vertices ``((x, y), ...)`` in pixel coordinates (not repeated at the end)."""

    points: tuple[tuple[float, float], ...]

    @classmethod
    def from_array(cls, array) -> Polygon:
        """From an array-like of shape ``(N, 2)`` of ``(x, y)``."""
        arr = np.asarray(array, dtype=float).reshape(-1, 2)
        return cls(tuple((float(x), float(y)) for x, y in arr))

    def as_array(self) -> np.ndarray:
        """Vertices as a float array ``(N, 2)`` of ``(x, y)``."""
        return np.asarray(self.points, dtype=float).reshape(-1, 2)

    @property
    def area(self) -> float:
        """Area in pixels^2 (shoelace formula; 0 for fewer than 3 vertices)."""
        return abs(_signed_area(self.as_array()))

    def to_dict(self) -> dict:
        return {"type": "polygon", "points": [list(p) for p in self.points]}


Geometry = Union[Point, Box, Polygon]  # noqa: UP007 (runtime alias, py3.10)


# --------------------------------------------------------------------------- helpers


def _as_mask(mask, name: str = "mask") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) image mask, got shape {mask.shape}")
    return mask if mask.dtype == bool else mask != 0


def _shape2(shape) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"image shape must be (H, W) with positive sizes, got {shape}")
    return shape  # type: ignore[return-value]


def _pixel_spacing(pixel_spacing) -> tuple[float, float]:
    if pixel_spacing is None:
        return 1.0, 1.0
    values = tuple(float(v) for v in np.atleast_1d(pixel_spacing))
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"pixel_spacing must be (mm per column, mm per row) > 0, got {values}")
    return values  # type: ignore[return-value]


def _signed_area(pts: np.ndarray) -> float:
    if len(pts) < 3:
        return 0.0
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _empty_error(what: str) -> ValueError:
    return ValueError(f"{what}: the mask is empty (no foreground pixel)")


# --------------------------------------------------------------------------- mask -> geometry


def mask_centroid(mask) -> Point:
    """Centre of mass of the mask's pixels (may lie outside a concave mask).

    Args:
        mask: bool ``(H, W)``.

    Raises:
        ValueError: for an empty mask or a mask that is not 2D.
    """
    rows, cols = np.nonzero(_as_mask(mask))
    if rows.size == 0:
        raise _empty_error("mask_centroid")
    return Point(float(cols.mean()), float(rows.mean()))


def inside_point(mask, pixel_spacing=None) -> Point:
    """A pixel centre guaranteed to lie inside the mask: the maximum of its distance transform.

    The distance (to the nearest background pixel, in mm with ``pixel_spacing``) is largest
    "deepest inside" the tumour. Ties go to the pixel closest to the centroid, then to the
    lowest row and column, so the answer is deterministic.

    Args:
        mask: bool ``(H, W)``.
        pixel_spacing: ``(mm per column, mm per row)``; None = square pixels.

    Raises:
        ValueError: for an empty mask.
    """
    from scipy.ndimage import distance_transform_edt

    mask = _as_mask(mask)
    if not mask.any():
        raise _empty_error("inside_point")
    sx, sy = _pixel_spacing(pixel_spacing)
    # pad so that the image border counts as background (a mask filling the image still works)
    dist = distance_transform_edt(np.pad(mask, 1), sampling=(sy, sx))[1:-1, 1:-1]
    best = dist.max()
    rows, cols = np.nonzero(dist >= best - 1e-9)
    centre = mask_centroid(mask)
    d2 = ((cols - centre.x) * sx) ** 2 + ((rows - centre.y) * sy) ** 2
    order = np.lexsort((cols, rows, np.round(d2, 9)))
    i = order[0]
    return Point(float(cols[i]), float(rows[i]))


def mask_box(mask) -> Box:
    """Tight bounding box of the mask: first and last foreground column and row (inclusive).

    Raises:
        ValueError: for an empty mask.
    """
    mask = _as_mask(mask)
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        raise _empty_error("mask_box")
    return Box(float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1]))


def _line_intersection(p1, d1, p2, d2):
    """Intersection of lines ``p1 + t d1`` and ``p2 + s d2``; returns (point, t, s) or None."""
    denom = d1[0] * d2[1] - d1[1] * d2[0]
    if abs(denom) < 1e-12:
        return None
    diff = p2 - p1
    t = (diff[0] * d2[1] - diff[1] * d2[0]) / denom
    s = (diff[0] * d1[1] - diff[1] * d1[0]) / denom
    return p1 + t * d1, t, s


def _reduce_convex(hull: np.ndarray, k: int, bounds: tuple[float, float, float, float]):
    """Greedy minimum-added-area edge removal on a convex polygon until it has <= k vertices.

    Removing edge ``(v_i, v_i+1)`` extends the edges before and after it until they meet at a
    new vertex ``p``; the polygon grows by the triangle ``(v_i, p, v_i+1)`` and stays convex, so
    it still contains everything the hull contained. ``p`` must stay inside ``bounds``
    (``xmin, ymin, xmax, ymax``). Returns None when no edge can be removed.
    """
    pts = [np.asarray(p, dtype=float) for p in hull]
    xmin, ymin, xmax, ymax = bounds
    while len(pts) > k:
        n = len(pts)
        best = None
        for i in range(n):
            a, b = pts[i - 1], pts[i]
            c, d = pts[(i + 1) % n], pts[(i + 2) % n]
            hit = _line_intersection(b, b - a, c, c - d)
            if hit is None:
                continue
            p, t, s = hit
            if t <= 0 or s <= 0:  # the neighbouring edges diverge: they never meet outside
                continue
            if not (xmin - _EPS <= p[0] <= xmax + _EPS and ymin - _EPS <= p[1] <= ymax + _EPS):
                continue
            p = np.clip(p, [xmin, ymin], [xmax, ymax])  # remove rounding error at the edge
            added = abs(_signed_area(np.array([b, p, c])))
            if best is None or added < best[0] - 1e-12:
                best = (added, i, p)
        if best is None:
            return None
        _, i, p = best
        j = (i + 1) % n
        pts[i] = p
        del pts[j]
    return np.array(pts)


def mask_polygon(mask, max_vertices: int = 8) -> Polygon:
    """An outer polygon with at most ``max_vertices`` vertices that contains the whole mask.

    Algorithm: the convex hull (scipy Qhull) of the corners of the mask's boundary pixels, so
    the polygon covers every mask pixel square, then greedy minimum-area edge removal (each step
    drops the hull edge whose removal, by extending its two neighbouring edges until they meet,
    adds the least area) until at most ``max_vertices`` remain, new vertices staying inside the
    image. Every step only adds area, so the result always contains the mask; concavities of the
    tumour outline are filled (it is a *bounding* polygon, as the VLM is asked for). When no edge
    can be removed within the image, the tight bounding box (4 vertices) is returned.

    Args:
        mask: bool ``(H, W)``.
        max_vertices: K >= 4.

    Returns:
        A convex :class:`Polygon`, vertices in order (clockwise on screen, y down).

    Raises:
        ValueError: for an empty mask or ``max_vertices < 4``.
    """
    from scipy.spatial import ConvexHull

    if max_vertices < 4:
        raise ValueError(f"mask_polygon: max_vertices must be >= 4, got {max_vertices}")
    mask = _as_mask(mask)
    if not mask.any():
        raise _empty_error("mask_polygon")
    rows, cols = np.nonzero(mask_surface(mask))
    offsets = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    corners = (np.stack([cols, rows], axis=1)[:, None, :] + offsets[None]).reshape(-1, 2)
    corners = np.unique(corners, axis=0)
    hull = corners[ConvexHull(corners).vertices]  # counter-clockwise in (x, y)
    h, w = mask.shape
    reduced = _reduce_convex(hull, max_vertices, (-0.5, -0.5, w - 0.5, h - 0.5))
    if reduced is None:
        reduced = mask_box(mask).corners()
    return Polygon.from_array(reduced)


# --------------------------------------------------------------------------- geometry -> mask


def box_to_mask(box: Box, shape) -> np.ndarray:
    """Pixels whose centre lies in the box region ``[x0 - .5, x1 + .5) x [y0 - .5, y1 + .5)``.

    Integer boxes give exactly columns ``x0..x1`` and rows ``y0..y1``; parts outside the image
    are dropped; an inverted or degenerate box gives an empty mask.

    Args:
        box: the box in pixel coordinates.
        shape: ``(H, W)``.

    Returns:
        bool ``(H, W)``.
    """
    h, w = _shape2(shape)
    cols = np.arange(w)
    rows = np.arange(h)
    in_x = (cols >= box.x0 - 0.5) & (cols < box.x1 + 0.5)
    in_y = (rows >= box.y0 - 0.5) & (rows < box.y1 + 0.5)
    return in_y[:, None] & in_x[None, :]


def _points_in_polygon(px: np.ndarray, py: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd test of points against a polygon, points on an edge counting as inside."""
    inside = np.zeros(px.shape, dtype=bool)
    on_edge = np.zeros(px.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        crosses = (y1 > py) != (y2 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (px < x_at)
        # on the segment: collinear and within its extent
        cross = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
        length = math.hypot(x2 - x1, y2 - y1)
        near = np.abs(cross) <= 1e-9 * max(length, 1.0)
        within = (
            (px >= min(x1, x2) - 1e-9)
            & (px <= max(x1, x2) + 1e-9)
            & (py >= min(y1, y2) - 1e-9)
            & (py <= max(y1, y2) + 1e-9)
        )
        on_edge |= near & within
    return inside | on_edge


def polygon_to_mask(polygon: Polygon, shape) -> np.ndarray:
    """Pixels whose centre lies inside the polygon or on its boundary (even-odd rule).

    Args:
        polygon: vertices in pixel coordinates; parts outside the image are dropped.
        shape: ``(H, W)``.

    Returns:
        bool ``(H, W)``; empty for fewer than 3 vertices or non-finite coordinates.
    """
    h, w = _shape2(shape)
    out = np.zeros((h, w), dtype=bool)
    pts = polygon.as_array()
    if len(pts) < 3 or not np.all(np.isfinite(pts)):
        return out
    c0 = max(math.floor(pts[:, 0].min()), 0)
    c1 = min(math.ceil(pts[:, 0].max()), w - 1)
    r0 = max(math.floor(pts[:, 1].min()), 0)
    r1 = min(math.ceil(pts[:, 1].max()), h - 1)
    if c0 > c1 or r0 > r1:
        return out
    rr, cc = np.mgrid[r0 : r1 + 1, c0 : c1 + 1]
    out[r0 : r1 + 1, c0 : c1 + 1] = _points_in_polygon(cc.astype(float), rr.astype(float), pts)
    return out


def point_to_mask(point: Point, shape, radius_mm: float, pixel_spacing=None) -> np.ndarray:
    """A disc of pixels whose centre is within ``radius_mm`` of the point (distances in mm).

    This is how a predicted centre point is turned into a mask when a Dice is wanted; the disc
    radius is a documented choice of the caller (the point itself is better scored by
    :func:`score_point`: inside the tumour or not, and distance to the true centre).

    Args:
        point: the point in pixel coordinates.
        shape: ``(H, W)``.
        radius_mm: disc radius in mm (>= 0; 0 gives at most the pixel at the point).
        pixel_spacing: ``(mm per column, mm per row)``; None = 1 mm square pixels.

    Returns:
        bool ``(H, W)``.

    Raises:
        ValueError: for a negative or non-finite radius.
    """
    if not (math.isfinite(radius_mm) and radius_mm >= 0):
        raise ValueError(f"point_to_mask: radius_mm must be a finite number >= 0, got {radius_mm}")
    h, w = _shape2(shape)
    sx, sy = _pixel_spacing(pixel_spacing)
    if not (math.isfinite(point.x) and math.isfinite(point.y)):
        return np.zeros((h, w), dtype=bool)
    dx = (np.arange(w) - point.x) * sx
    dy = (np.arange(h) - point.y) * sy
    return (dy[:, None] ** 2 + dx[None, :] ** 2) <= radius_mm**2 + 1e-9


def geometry_to_mask(geometry: Geometry, shape, *, radius_mm: float = 10.0, pixel_spacing=None):
    """The mask of any geometry (box filled, polygon filled, point as a disc of ``radius_mm``)."""
    if isinstance(geometry, Box):
        return box_to_mask(geometry, shape)
    if isinstance(geometry, Polygon):
        return polygon_to_mask(geometry, shape)
    if isinstance(geometry, Point):
        return point_to_mask(geometry, shape, radius_mm, pixel_spacing)
    raise TypeError(f"Not a Point, Box or Polygon: {geometry!r}")


# --------------------------------------------------------------------------- points


def _pixel_of(point: Point, shape) -> tuple[int, int] | None:
    h, w = _shape2(shape)
    if not (math.isfinite(point.x) and math.isfinite(point.y)):
        return None
    if not (-0.5 <= point.x <= w - 0.5 and -0.5 <= point.y <= h - 0.5):
        return None
    col = min(math.floor(point.x + 0.5), w - 1)
    row = min(math.floor(point.y + 0.5), h - 1)
    return row, col


def point_in_mask(point: Point, mask) -> bool:
    """Whether the point falls in a foreground pixel (the pixel whose square contains it).

    Points outside the image, or with non-finite coordinates, are never inside.
    """
    mask = _as_mask(mask)
    pixel = _pixel_of(point, mask.shape)
    return bool(pixel is not None and mask[pixel])


def point_distance_mm(p: Point, q: Point, pixel_spacing=None) -> float:
    """Euclidean distance in mm between two points (``pixel_spacing`` = (mm/col, mm/row))."""
    sx, sy = _pixel_spacing(pixel_spacing)
    return float(math.hypot((p.x - q.x) * sx, (p.y - q.y) * sy))


@dataclass(frozen=True)
class PointScore:
    """How a predicted centre point relates to the reference tumour on one slice.

    Attributes:
        inside: the point falls in a tumour pixel.
        distance_to_centre_mm: distance to the reference mask's centroid (the "true centre").
        distance_to_tumour_mm: distance to the nearest tumour pixel centre (0 when inside).
        dice: Dice of a disc of ``radius_mm`` around the point against the reference mask.
        radius_mm: the disc radius used for ``dice``.
    """

    inside: bool
    distance_to_centre_mm: float
    distance_to_tumour_mm: float
    dice: float
    radius_mm: float

    def to_dict(self) -> dict:
        return {
            "inside": self.inside,
            "distance_to_centre_mm": self.distance_to_centre_mm,
            "distance_to_tumour_mm": self.distance_to_tumour_mm,
            "dice": self.dice,
            "radius_mm": self.radius_mm,
        }


def score_point(point: Point, ref_mask, pixel_spacing=None, *, radius_mm: float = 10.0):
    """Score a predicted centre point against a reference mask on the same slice.

    The point is scored by whether it falls inside the tumour and by its distance in mm to the
    tumour centroid; the Dice of a disc of ``radius_mm`` (default 10 mm, about 314 mm^2) is
    given for comparison with box and polygon answers, and depends on that choice.

    Args:
        point: predicted point in pixel coordinates.
        ref_mask: bool ``(H, W)`` reference tumour mask (non-empty).
        pixel_spacing: ``(mm per column, mm per row)``.
        radius_mm: disc radius for the Dice.

    Raises:
        ValueError: for an empty reference mask (there is no centre to compare with).
    """
    ref = _as_mask(ref_mask, "ref_mask")
    if not ref.any():
        raise _empty_error("score_point (reference)")
    sx, sy = _pixel_spacing(pixel_spacing)
    centre = mask_centroid(ref)
    inside = point_in_mask(point, ref)
    rows, cols = np.nonzero(ref)
    if inside:
        nearest = 0.0
    elif math.isfinite(point.x) and math.isfinite(point.y):
        nearest = float(np.sqrt(((cols - point.x) * sx) ** 2 + ((rows - point.y) * sy) ** 2).min())
    else:
        nearest = math.inf
    disc = point_to_mask(point, ref.shape, radius_mm, (sx, sy))
    return PointScore(
        inside=inside,
        distance_to_centre_mm=point_distance_mm(point, centre, (sx, sy)),
        distance_to_tumour_mm=nearest,
        dice=dice(disc, ref),
        radius_mm=float(radius_mm),
    )


# --------------------------------------------------------------------------- coordinate systems


def _scale(system: str) -> float | None:
    if system not in COORDINATE_SYSTEMS:
        raise ValueError(
            f"Unknown coordinate system {system!r}; use one of {', '.join(COORDINATE_SYSTEMS)}"
        )
    return COORDINATE_SYSTEMS[system]


def _convert_xy(values, scale: float | None, width: int, height: int, to_pixel: bool):
    arr = np.asarray(values, dtype=float)
    pairs = (arr.ndim == 1 and arr.size % 2 == 0) or (arr.ndim > 1 and arr.shape[-1] == 2)
    if not pairs:
        raise ValueError(f"coordinates must be (x, y) pairs, got shape {arr.shape}")
    flat = arr.reshape(-1, 2).copy()
    if scale is not None:
        size = np.array([width, height], dtype=float)
        flat = flat / scale * size - 0.5 if to_pixel else (flat + 0.5) / size * scale
    return flat.reshape(arr.shape)


def _convert(geometry, system: str, width: int, height: int, to_pixel: bool):
    scale = _scale(system)
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
    if isinstance(geometry, Point):
        x, y = _convert_xy([geometry.x, geometry.y], scale, width, height, to_pixel)
        return Point(float(x), float(y))
    if isinstance(geometry, Polygon):
        return Polygon.from_array(_convert_xy(geometry.as_array(), scale, width, height, to_pixel))
    if isinstance(geometry, Box):
        if scale is None:
            return geometry
        # boxes convert by their edges: pixel x0 <-> left edge x0 - 0.5, x1 <-> right edge x1 + 0.5
        w, h = float(width), float(height)
        if to_pixel:
            return Box(
                geometry.x0 / scale * w,
                geometry.y0 / scale * h,
                geometry.x1 / scale * w - 1.0,
                geometry.y1 / scale * h - 1.0,
            )
        return Box(
            geometry.x0 / w * scale,
            geometry.y0 / h * scale,
            (geometry.x1 + 1.0) / w * scale,
            (geometry.y1 + 1.0) / h * scale,
        )
    return _convert_xy(geometry, scale, width, height, to_pixel)


def to_pixels(values, system: str, width: int, height: int):
    """Convert from ``system`` (``"pixel"``, ``"normalized"``, ``"per_mille"``) to pixels.

    Args:
        values: a :class:`Point`, :class:`Box` (converted by its edges, see module docs),
            :class:`Polygon`, or an array-like of ``(x, y)`` pairs (shape ``(..., 2)`` or flat
            ``[x, y, x, y, ...]``).
        system: the coordinate system of ``values``.
        width: image width W in pixels (columns).
        height: image height H in pixels (rows).

    Returns:
        The same kind of object, in pixel coordinates (float arrays for array input). No
        clipping or validation happens here (see ``validate_*``).

    Raises:
        ValueError: for an unknown system or malformed coordinates.
    """
    return _convert(values, system, int(width), int(height), to_pixel=True)


def from_pixels(values, system: str, width: int, height: int):
    """Convert pixel coordinates to ``system``; the inverse of :func:`to_pixels`."""
    return _convert(values, system, int(width), int(height), to_pixel=False)


# --------------------------------------------------------------------------- validation


def _finite(*values) -> bool:
    return all(math.isfinite(float(v)) for v in values)


def validate_point(point: Point, width: int, height: int, *, clip: bool = False):
    """Check a point (pixel coordinates) against a ``width`` x ``height`` image.

    The image covers ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``. A point outside it is rejected
    (``"out_of_bounds"``) unless ``clip``, which moves it to the nearest point of the image and
    says ``"clipped"`` (off by default: moving a point changes what it claims).

    Returns:
        ``(point_or_None, status)``.
    """
    if not _finite(point.x, point.y):
        return None, "not_finite"
    xmax, ymax = width - 0.5, height - 0.5
    if -0.5 <= point.x <= xmax and -0.5 <= point.y <= ymax:
        return point, "ok"
    if not clip:
        return None, "out_of_bounds"
    return Point(min(max(point.x, -0.5), xmax), min(max(point.y, -0.5), ymax)), "clipped"


def validate_box(box: Box, width: int, height: int, *, clip: bool = True):
    """Check a box (pixel coordinates, inclusive extent) against a ``width`` x ``height`` image.

    Checks in order: finite coordinates (``"not_finite"``); edges not crossed, i.e.
    ``x1 + 0.5 >= x0 - 0.5`` (``"inverted"``: never swapped); a positive area that covers at
    least one pixel centre (``"degenerate"``); then the image: entirely outside
    (``"out_of_bounds"``), partly outside (clipped to columns ``0..W-1`` and rows ``0..H-1`` with
    ``"clipped"``, or ``"partly_outside"`` when ``clip=False``).

    Returns:
        ``(box_or_None, status)``.
    """
    if not _finite(*box.as_tuple()):
        return None, "not_finite"
    if box.width < 0 or box.height < 0:
        return None, "inverted"
    if box.width <= _EPS or box.height <= _EPS:
        return None, "degenerate"
    # does the (unclipped) box hold any integer pixel centre?
    has_col = math.ceil(box.x0 - 0.5) < box.x1 + 0.5
    has_row = math.ceil(box.y0 - 0.5) < box.y1 + 0.5
    if not (has_col and has_row):
        return None, "degenerate"
    clipped = Box(
        max(box.x0, 0.0), max(box.y0, 0.0), min(box.x1, width - 1.0), min(box.y1, height - 1.0)
    )
    if (
        clipped.width <= _EPS
        or clipped.height <= _EPS
        or not box_to_mask(clipped, (height, width)).any()
    ):
        return None, "out_of_bounds"
    if clipped == box:
        return box, "ok"
    return (clipped, "clipped") if clip else (None, "partly_outside")


def _segments_cross(p1, p2, p3, p4) -> bool:
    """Whether closed segments p1p2 and p3p4 intersect (touching counts)."""

    def orient(a, b, c):
        v = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        return 0 if abs(v) < 1e-12 else (1 if v > 0 else -1)

    def on_seg(a, b, c):
        return (
            min(a[0], b[0]) - 1e-12 <= c[0] <= max(a[0], b[0]) + 1e-12
            and min(a[1], b[1]) - 1e-12 <= c[1] <= max(a[1], b[1]) + 1e-12
        )

    o1, o2, o3, o4 = orient(p1, p2, p3), orient(p1, p2, p4), orient(p3, p4, p1), orient(p3, p4, p2)
    if o1 != o2 and o3 != o4:
        return True
    return (
        (o1 == 0 and on_seg(p1, p2, p3))
        or (o2 == 0 and on_seg(p1, p2, p4))
        or (o3 == 0 and on_seg(p3, p4, p1))
        or (o4 == 0 and on_seg(p3, p4, p2))
    )


def _self_intersecting(pts: np.ndarray) -> bool:
    n = len(pts)
    for i in range(n):
        a, b = pts[i], pts[(i + 1) % n]
        for j in range(i + 1, n):
            if j == i or (j + 1) % n == i or j == (i + 1) % n:
                continue  # adjacent edges share a vertex
            if _segments_cross(a, b, pts[j], pts[(j + 1) % n]):
                return True
    return False


def _clip_polygon(pts: np.ndarray, xmin: float, ymin: float, xmax: float, ymax: float):
    """Sutherland-Hodgman clipping of a polygon to an axis-aligned rectangle."""
    edges = (
        (lambda p: p[0] >= xmin, lambda a, b: _cut_x(a, b, xmin)),
        (lambda p: p[0] <= xmax, lambda a, b: _cut_x(a, b, xmax)),
        (lambda p: p[1] >= ymin, lambda a, b: _cut_y(a, b, ymin)),
        (lambda p: p[1] <= ymax, lambda a, b: _cut_y(a, b, ymax)),
    )
    out = [tuple(p) for p in pts]
    for inside, cut in edges:
        if not out:
            break
        src, out = out, []
        for i, cur in enumerate(src):
            prev = src[i - 1]
            if inside(cur):
                if not inside(prev):
                    out.append(cut(prev, cur))
                out.append(cur)
            elif inside(prev):
                out.append(cut(prev, cur))
    return np.asarray(out, dtype=float).reshape(-1, 2)


def _cut_x(a, b, x):
    t = (x - a[0]) / (b[0] - a[0])
    return (x, a[1] + t * (b[1] - a[1]))


def _cut_y(a, b, y):
    t = (y - a[1]) / (b[1] - a[1])
    return (a[0] + t * (b[0] - a[0]), y)


def _dedupe(pts: np.ndarray) -> np.ndarray:
    """Drop consecutive repeated vertices (and a closing repeat); the shape is unchanged."""
    keep = [p for i, p in enumerate(pts) if i == 0 or not np.allclose(p, pts[i - 1], atol=1e-12)]
    if len(keep) > 1 and np.allclose(keep[0], keep[-1], atol=1e-12):
        keep.pop()
    return np.asarray(keep, dtype=float).reshape(-1, 2)


def validate_polygon(
    polygon: Polygon,
    width: int,
    height: int,
    *,
    max_vertices: int | None = None,
    clip: bool = True,
):
    """Check a polygon (pixel coordinates) against a ``width`` x ``height`` image.

    Checks in order: finite coordinates (``"not_finite"``); at least 3 distinct vertices
    (``"too_few_vertices"``; repeated consecutive vertices, which do not change the shape, are
    dropped); at most ``max_vertices`` (``"too_many_vertices"``, never simplified); no crossing
    edges (``"self_intersecting"``); a positive area covering a pixel centre (``"degenerate"``);
    then the image: entirely outside (``"out_of_bounds"``), partly outside (clipped to the image
    square ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` with ``"clipped"``, or ``"partly_outside"``).

    Returns:
        ``(polygon_or_None, status)``.
    """
    pts = polygon.as_array()
    if not np.all(np.isfinite(pts)):
        return None, "not_finite"
    pts = _dedupe(pts)
    if len(pts) < 3:
        return None, "too_few_vertices"
    if max_vertices is not None and len(pts) > max_vertices:
        return None, "too_many_vertices"
    if _self_intersecting(pts):
        return None, "self_intersecting"
    if abs(_signed_area(pts)) <= _EPS:
        return None, "degenerate"
    # coverage of a pixel centre, ignoring the image bounds (on an enlarged grid)
    lo = np.floor(pts.min(axis=0)).astype(int)
    hi = np.ceil(pts.max(axis=0)).astype(int)
    shifted = Polygon.from_array(pts - lo)
    if not polygon_to_mask(shifted, (hi[1] - lo[1] + 1, hi[0] - lo[0] + 1)).any():
        return None, "degenerate"
    xmax, ymax = width - 0.5, height - 0.5
    result = Polygon.from_array(pts)
    lo_x, lo_y, hi_x, hi_y = -0.5 - _EPS, -0.5 - _EPS, xmax + _EPS, ymax + _EPS
    inside = (pts[:, 0] >= lo_x) & (pts[:, 0] <= hi_x) & (pts[:, 1] >= lo_y) & (pts[:, 1] <= hi_y)
    if inside.all():
        return result, "ok"
    clipped = _dedupe(_clip_polygon(pts, -0.5, -0.5, xmax, ymax))
    if len(clipped) < 3 or abs(_signed_area(clipped)) <= _EPS:
        return None, "out_of_bounds"
    clipped_poly = Polygon.from_array(clipped)
    if not polygon_to_mask(clipped_poly, (height, width)).any():
        return None, "out_of_bounds"
    return (clipped_poly, "clipped") if clip else (None, "partly_outside")


# --------------------------------------------------------------------------- tolerance, hulls

#: How far a coordinate may lie beyond the image, as a fraction of the image side on its axis,
#: and still be clipped to the image (an answer that is then ``repaired``); a coordinate further
#: out makes the answer invalid (:func:`beyond_image`). 2% of a 240-pixel side is 4.8 pixels.
OUTSIDE_TOLERANCE: float = 0.02


@dataclass(frozen=True)
class Overshoot:
    """One coordinate that lies beyond the image by more than the tolerance.

    Attributes:
        name: which coordinate: ``x`` / ``y`` (point), ``x0`` / ``y0`` / ``x1`` / ``y1`` (box),
            ``points[i].x`` / ``points[i].y`` (polygon vertex ``i``).
        index: its position in the geometry's flat coordinate list: ``(x, y)`` for a point,
            :meth:`Box.as_tuple` for a box, ``Polygon.as_array().ravel()`` for a polygon.
        value: the coordinate, in pixel coordinates.
        beyond: how far it lies outside the image's extent ``[-0.5, side - 0.5]``, in pixels.
        tolerance: the overshoot allowed on its axis, in pixels.
    """

    name: str
    index: int
    value: float
    beyond: float
    tolerance: float


def outside_tolerance_px(width: int, height: int, fraction: float = OUTSIDE_TOLERANCE):
    """The overshoot allowed beyond a ``width`` x ``height`` image, in pixels.

    Args:
        width: image width W (columns).
        height: image height H (rows).
        fraction: the tolerance as a fraction of the side (>= 0).

    Returns:
        ``(tolerance in x, tolerance in y)`` = ``(fraction * W, fraction * H)`` pixels.

    Raises:
        ValueError: for a negative or non-finite fraction, or a non-positive image size.
    """
    h, w = _shape2((height, width))
    if not (math.isfinite(fraction) and fraction >= 0):
        raise ValueError(f"outside tolerance must be a finite fraction >= 0, got {fraction}")
    return fraction * w, fraction * h


def _coordinate_names(geometry: Geometry) -> tuple[np.ndarray, list[str]]:
    if isinstance(geometry, Point):
        return np.array([geometry.x, geometry.y], dtype=float), ["x", "y"]
    if isinstance(geometry, Box):
        return np.array(geometry.as_tuple(), dtype=float), ["x0", "y0", "x1", "y1"]
    if isinstance(geometry, Polygon):
        flat = geometry.as_array().ravel()
        return flat, [f"points[{i // 2}].{'xy'[i % 2]}" for i in range(flat.size)]
    raise TypeError(f"Not a Point, Box or Polygon: {geometry!r}")


def beyond_image(
    geometry: Geometry, width: int, height: int, *, fraction: float = OUTSIDE_TOLERANCE
) -> tuple[Overshoot, ...]:
    """The coordinates of a geometry that lie beyond the image by more than the tolerance.

    Each coordinate (pixel coordinates) is compared with the image's extent on its axis,
    ``[-0.5, W - 0.5]`` for ``x`` and ``[-0.5, H - 0.5]`` for ``y`` (box coordinates are taken
    as positions too, not as the edges of their pixels); it is *beyond* when it lies outside
    that extent by more than ``fraction`` of the side (:func:`outside_tolerance_px`). A small
    overshoot (a model answering ``x = W`` for the last column) is left to the ``validate_*``
    functions, which clip it; a large one (``x = 3000`` on a 64-pixel image) is not a position
    on this image at all and should make the answer invalid rather than be clipped to the border.
    Non-finite coordinates are not reported here (the validators call them ``"not_finite"``).

    Args:
        geometry: a :class:`Point`, :class:`Box` or :class:`Polygon` in pixel coordinates.
        width: image width W (columns).
        height: image height H (rows).
        fraction: the tolerance as a fraction of the side, default :data:`OUTSIDE_TOLERANCE`.

    Returns:
        One :class:`Overshoot` per offending coordinate, in coordinate order; empty when the
        geometry lies within the tolerance.

    Raises:
        TypeError: for something that is not a Point, Box or Polygon.
        ValueError: for a bad ``fraction`` or image size.
    """
    tol_x, tol_y = outside_tolerance_px(width, height, fraction)
    values, names = _coordinate_names(geometry)
    out = []
    for i, (value, name) in enumerate(zip(values, names, strict=True)):
        if not math.isfinite(value):
            continue
        is_x = i % 2 == 0
        high = (width if is_x else height) - 0.5
        beyond = max(-0.5 - value, value - high, 0.0)
        tolerance = tol_x if is_x else tol_y
        if beyond > tolerance + _EPS:
            out.append(Overshoot(name, i, float(value), float(beyond), float(tolerance)))
    return tuple(out)


def _convex_hull(pts: np.ndarray) -> np.ndarray:
    """Convex hull of ``(N, 2)`` points (Andrew's monotone chain), vertices in order, without
    collinear points; fewer than 3 rows when the points are collinear or fewer than 3."""
    unique = np.unique(pts, axis=0)  # sorted by x, then y
    if len(unique) < 3:
        return unique

    def cross(o, a, b) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def chain(points) -> list:
        out: list = []
        for p in points:
            while len(out) >= 2 and cross(out[-2], out[-1], p) <= 1e-12:
                out.pop()
            out.append(p)
        return out

    lower, upper = chain(unique), chain(unique[::-1])
    return np.asarray(lower[:-1] + upper[:-1], dtype=float).reshape(-1, 2)


def polygon_hull_mask(vertices, shape) -> np.ndarray:
    """The filled convex hull of a polygon's vertices: a lenient mask of a polygon answer.

    The strict mask (:func:`polygon_to_mask`, even-odd rule) of a self-intersecting or
    mis-ordered polygon is not the region the model meant (a bow-tie fills two triangles);
    the hull ignores the vertex order, so such an answer can also be scored leniently, beside
    the strict score. For a convex polygon in order the two masks are the same.

    Args:
        vertices: a :class:`Polygon` or an array-like ``(N, 2)`` of ``(x, y)`` in pixel
            coordinates.
        shape: ``(H, W)``.

    Returns:
        bool ``(H, W)``: the pixels whose centre lies in the hull or on its boundary (parts
        outside the image dropped); empty for non-finite coordinates or fewer than 3
        non-collinear vertices.
    """
    pts = vertices.as_array() if isinstance(vertices, Polygon) else np.asarray(vertices, float)
    pts = pts.reshape(-1, 2)
    h, w = _shape2(shape)
    if len(pts) < 3 or not np.all(np.isfinite(pts)):
        return np.zeros((h, w), dtype=bool)
    hull = _convex_hull(pts)
    if len(hull) < 3:
        return np.zeros((h, w), dtype=bool)
    return polygon_to_mask(Polygon.from_array(hull), (h, w))
