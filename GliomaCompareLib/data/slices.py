"""Axial slices for the VLM arm: selection rule, FLAIR windowing, and exact geometry.

Display orientation (radiological convention): the patient's right is on the image's left and
anterior is at the top. For a slice image of ``H`` rows and ``W`` columns, pixel ``(c, r)``
(column, row; origin top-left; pixel centres at integer coordinates) maps to a voxel index and
to RAS millimetres through :class:`SliceGeometry`, derived from the volume's affine, so a point
a VLM names can be placed in Slicer on the right spot. Coordinates are floats; the mapping is
affine and exact in both directions.

Selection rule (:class:`SliceRule`; every field lives in the run config):

- ``mode="tumour_area"`` (default): every axial slice whose region area (``region``, WT by
  default) is at least ``min_area_mm2``; then, if ``max_slices`` is set, that many slices
  evenly spaced over the selected ones (always including the largest).
- ``mode="largest"``: the ``max_slices`` slices with the largest region area.
- ``mode="brain"``: label-free; every slice whose brain area is at least
  ``min_brain_fraction`` of the largest brain slice, thinned by ``stride`` (and to
  ``max_slices`` evenly spaced ones when set).
- ``mode="cnn"``: label-free and automatic; the slices where the CNN's own predicted label map
  shows the most tumour (``region`` of the prediction): with ``max_slices``, that many slices
  of largest predicted area; without, every slice of at least ``min_area_mm2``.
- ``mode="given"``: label-free; the slices a user chose for one patient (the slice on screen in
  3D Slicer, ``gliomacompare vlm --slices CASE:K``). The rule selects nothing itself: the indices
  come with the case (:func:`case_slices`'s ``indices``), are checked against the volume
  (:func:`check_slice_indices`), and are asked as they are. It is not one of :data:`SLICE_MODES`
  (the automatic rules a run over a cohort may use): a cohort has no user's slices.

``tumour_area`` and ``largest`` read the reference labels: they are *oracle slice selection*
(the study's protocol asks the VLM about slices known to show tumour), and the report says so.
``brain``, ``cnn`` and ``given`` need no reference labels; a case without labels asked with an
oracle rule is asked on label-free slices instead (:func:`label_free_rule`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

__all__ = [
    "GIVEN_MODE",
    "LABEL_FREE_MODES",
    "ORACLE_MODES",
    "SLICE_MODES",
    "SliceGeometry",
    "SliceImage",
    "SliceRule",
    "WindowSpec",
    "case_slices",
    "check_slice_indices",
    "label_free_rule",
    "parse_slice_list",
    "render_slice",
    "select_slices",
    "window_volume",
]


#: The automatic slice rules (``--slice-rule``, a run config): each chooses the slices itself.
SLICE_MODES = ("tumour_area", "largest", "brain", "cnn")
#: The slices a user chose for a patient (``--slices``): no rule of its own, and no cohort rule.
GIVEN_MODE = "given"
#: The modes that read the reference labels; those that need none.
ORACLE_MODES = ("tumour_area", "largest")
LABEL_FREE_MODES = ("brain", "cnn", GIVEN_MODE)


@dataclass(frozen=True)
class SliceRule:
    """Which axial slices the VLM is asked about (see module docstring)."""

    mode: Literal["tumour_area", "largest", "brain", "cnn", "given"] = "tumour_area"
    min_area_mm2: float = 100.0
    max_slices: int | None = None
    region: str = "WT"
    min_brain_fraction: float = 0.25
    stride: int = 1

    def __post_init__(self):
        if self.mode not in (*SLICE_MODES, GIVEN_MODE):
            raise ValueError(
                f"Slice rule mode {self.mode!r}: use {', '.join(SLICE_MODES)} (or {GIVEN_MODE}: "
                "slices chosen by the user)"
            )
        if self.mode == GIVEN_MODE and self.max_slices is not None:
            raise ValueError(
                "Slice rule mode 'given' asks about the user's slices as they are; max_slices "
                "does not apply"
            )
        if self.mode == "largest" and not self.max_slices:
            raise ValueError("Slice rule mode 'largest' needs max_slices >= 1")
        if self.max_slices is not None and self.max_slices < 1:
            raise ValueError(f"Slice rule max_slices must be >= 1, got {self.max_slices}")
        if self.stride < 1:
            raise ValueError(f"Slice rule stride must be >= 1, got {self.stride}")

    @property
    def oracle(self) -> bool:
        """Whether the rule reads the reference labels (oracle slice selection)."""
        return self.mode in ORACLE_MODES

    def describe(self) -> str:
        """How the report and the methods section name this rule."""
        if self.mode == GIVEN_MODE:
            return "label-free: slices chosen by the user (no reference labels used)"
        k = f"at most {self.max_slices} " if self.max_slices else ""
        if self.mode == "brain":
            return f"label-free: {k}brain slices (no reference labels used)"
        if self.mode == "cnn":
            return (
                f"label-free: {k}slices with the largest {self.region} area in the CNN's own "
                "prediction (no reference labels used)"
            )
        what = "largest" if self.mode == "largest" else f"at least {self.min_area_mm2:g} mm2 of"
        return (
            f"oracle slice selection (uses the reference labels): {k}slices with {what} "
            f"reference {self.region}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def label_free_rule(rule: SliceRule, have_prediction: bool) -> SliceRule:
    """The label-free rule used for a case without reference labels: the CNN's tumour slices
    when a prediction is at hand, else brain slices; ``max_slices`` is kept. A label-free rule
    is returned unchanged."""
    if not rule.oracle:
        return rule
    mode = "cnn" if have_prediction else "brain"
    return SliceRule(
        mode=mode,
        min_area_mm2=rule.min_area_mm2,
        max_slices=rule.max_slices,
        region=rule.region,
        min_brain_fraction=rule.min_brain_fraction,
        stride=rule.stride,
    )


def parse_slice_list(text: str) -> tuple[str, tuple[int, ...]]:
    """``"CASE:K[,K...]"`` -> ``(CASE, (K, ...))``: a user's slices of one case (axial voxel
    indices, counted from 0), as ``gliomacompare vlm --slices`` takes them. The case id is
    everything before the last ``:``.

    Raises:
        ValueError: naming the text, when there is no case id, no index, or an index that is not
            a whole number >= 0.
    """
    case_id, sep, indices = str(text).rpartition(":")
    case_id = case_id.strip()
    if not sep or not case_id:
        raise ValueError(f"{text!r}: expected CASE:K[,K...] (a case id, ':', slice indices)")
    items = [item.strip() for item in indices.split(",") if item.strip()]
    if not items:
        raise ValueError(f"{text!r}: no slice index after {case_id}:")
    bad = [item for item in items if not (item.isascii() and item.isdigit())]
    if bad:
        raise ValueError(
            f"{text!r}: slice index {bad[0]!r} of {case_id} is not a whole number >= 0"
        )
    return case_id, tuple(int(item) for item in items)


def check_slice_indices(case_id: str, indices, affine, shape) -> tuple[int, ...]:
    """A user's slice ``indices`` of case ``case_id`` checked against its volume (``affine``,
    ``shape``): ascending, each once.

    Raises:
        ValueError: naming the case and the index, when there is none or one is not an axial
            slice of the volume.
    """
    axis = _slice_axis(affine)
    count = int(tuple(shape)[axis])
    if not len(indices):
        raise ValueError(f"{case_id}: no slice chosen (slice rule 'given' needs slice indices)")
    for index in indices:
        if not 0 <= int(index) < count:
            raise ValueError(
                f"{case_id}: slice {index} is not an axial slice of the case (0..{count - 1})"
            )
    return tuple(sorted({int(i) for i in indices}))


@dataclass(frozen=True)
class WindowSpec:
    """FLAIR to 8-bit: intensities at the ``lower``/``upper`` percentiles of brain voxels map
    to 0/255 (clipped); ``scope`` says whether percentiles come from the volume or the slice."""

    lower: float = 0.5
    upper: float = 99.5
    scope: Literal["volume", "slice"] = "volume"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class SliceGeometry:
    """Exact pixel <-> voxel <-> RAS mapping of one axial slice of a volume.

    Attributes:
        affine: the volume's 4x4 voxel -> RAS matrix.
        shape: the volume's shape ``(X, Y, Z)``.
        slice_axis: the voxel axis closest to superior-inferior (2 for BraTS).
        col_axis: the voxel axis shown left-right on the image.
        row_axis: the voxel axis shown top-bottom.
        flip_col, flip_row: whether the voxel index runs against the image axis.
        index: the slice's voxel index along ``slice_axis``.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    slice_axis: int
    col_axis: int
    row_axis: int
    flip_col: bool
    flip_row: bool
    index: int

    @classmethod
    def axial(cls, affine: np.ndarray, shape, index: int) -> SliceGeometry:
        """Geometry of axial slice ``index`` of a volume with this affine and shape.

        Raises:
            ValueError: when ``index`` is outside the volume.
        """
        affine = np.asarray(affine, dtype=float)
        direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
        # voxel axis most aligned with S (RAS z), then with R (x); the last one is A-P (y)
        slice_axis = int(np.argmax(np.abs(direction[2])))
        rest = [a for a in range(3) if a != slice_axis]
        col_axis = max(rest, key=lambda a: abs(direction[0, a]))
        row_axis = next(a for a in rest if a != col_axis)
        shape = tuple(int(s) for s in shape)
        if not 0 <= index < shape[slice_axis]:
            raise ValueError(f"Slice index {index} is outside 0..{shape[slice_axis] - 1}")
        return cls(
            affine=affine,
            shape=shape,  # type: ignore[arg-type]
            slice_axis=slice_axis,
            col_axis=col_axis,
            row_axis=row_axis,
            # column grows toward the patient's left (RAS x decreasing)
            flip_col=bool(direction[0, col_axis] > 0),
            # row grows toward posterior (RAS y decreasing)
            flip_row=bool(direction[1, row_axis] > 0),
            index=int(index),
        )

    @property
    def width(self) -> int:
        return self.shape[self.col_axis]

    @property
    def height(self) -> int:
        return self.shape[self.row_axis]

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """mm per pixel along columns and rows."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(norms[self.col_axis]), float(norms[self.row_axis])

    def extract(self, volume: np.ndarray) -> np.ndarray:
        """The slice of ``volume`` (X, Y, Z[, ...]) as an image array ``(H, W[, ...])``."""
        plane = np.take(volume, self.index, axis=self.slice_axis)
        axes = [a for a in range(3) if a != self.slice_axis]
        order = [axes.index(self.row_axis), axes.index(self.col_axis)]
        plane = np.moveaxis(plane, order, [0, 1])
        if self.flip_row:
            plane = plane[::-1]
        if self.flip_col:
            plane = plane[:, ::-1]
        return np.ascontiguousarray(plane)

    def insert(self, image: np.ndarray, out: np.ndarray | None = None, dtype=bool) -> np.ndarray:
        """Place a slice image ``(H, W)`` back into a volume (zeros elsewhere unless ``out``)."""
        if out is None:
            out = np.zeros(self.shape, dtype=dtype)
        plane = np.asarray(image)
        if plane.shape != (self.height, self.width):
            raise ValueError(f"Slice image shape {plane.shape} != {(self.height, self.width)}")
        if self.flip_row:
            plane = plane[::-1]
        if self.flip_col:
            plane = plane[:, ::-1]
        axes = [a for a in range(3) if a != self.slice_axis]
        order = [axes.index(self.row_axis), axes.index(self.col_axis)]
        plane = np.moveaxis(plane, [0, 1], order)
        index = [slice(None)] * 3
        index[self.slice_axis] = self.index
        out[tuple(index)] = plane
        return out

    def pixel_to_voxel(self, col, row) -> np.ndarray:
        """Pixel ``(col, row)`` (scalars or arrays) -> voxel ``(i, j, k)``, shape ``(..., 3)``."""
        col = np.asarray(col, dtype=float)
        row = np.asarray(row, dtype=float)
        out = np.zeros((*np.broadcast(col, row).shape, 3))
        out[..., self.col_axis] = (self.width - 1 - col) if self.flip_col else col
        out[..., self.row_axis] = (self.height - 1 - row) if self.flip_row else row
        out[..., self.slice_axis] = self.index
        return out

    def voxel_to_pixel(self, ijk) -> np.ndarray:
        """Voxel ``(..., 3)`` -> ``(..., 3)`` of ``(col, row, slice_offset)``; the last entry is
        the signed distance in voxels from this slice (0 on the slice)."""
        ijk = np.asarray(ijk, dtype=float)
        vc = ijk[..., self.col_axis]
        vr = ijk[..., self.row_axis]
        col = (self.width - 1 - vc) if self.flip_col else vc
        row = (self.height - 1 - vr) if self.flip_row else vr
        return np.stack([col, row, ijk[..., self.slice_axis] - self.index], axis=-1)

    def voxel_to_ras(self, ijk) -> np.ndarray:
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def ras_to_voxel(self, xyz) -> np.ndarray:
        xyz = np.asarray(xyz, dtype=float)
        inv = np.linalg.inv(self.affine)
        return xyz @ inv[:3, :3].T + inv[:3, 3]

    def pixel_to_ras(self, col, row) -> np.ndarray:
        """Pixel ``(col, row)`` -> RAS mm, shape ``(..., 3)``."""
        return self.voxel_to_ras(self.pixel_to_voxel(col, row))

    def ras_to_pixel(self, xyz) -> np.ndarray:
        """RAS mm -> ``(col, row, slice_offset)`` (see :meth:`voxel_to_pixel`)."""
        return self.voxel_to_pixel(self.ras_to_voxel(xyz))

    def to_dict(self) -> dict:
        return {
            "affine": np.asarray(self.affine).tolist(),
            "shape": list(self.shape),
            "slice_axis": self.slice_axis,
            "col_axis": self.col_axis,
            "row_axis": self.row_axis,
            "flip_col": self.flip_col,
            "flip_row": self.flip_row,
            "index": self.index,
        }

    @classmethod
    def from_dict(cls, data: dict) -> SliceGeometry:
        return cls(
            affine=np.asarray(data["affine"], dtype=float),
            shape=tuple(data["shape"]),  # type: ignore[arg-type]
            slice_axis=int(data["slice_axis"]),
            col_axis=int(data["col_axis"]),
            row_axis=int(data["row_axis"]),
            flip_col=bool(data["flip_col"]),
            flip_row=bool(data["flip_row"]),
            index=int(data["index"]),
        )


@dataclass(frozen=True, eq=False)
class SliceImage:
    """One rendered slice: what the VLM sees, and how to map its answer back.

    Attributes:
        case_id: the case.
        index: axial slice index (voxel index along the slice axis).
        rgb: uint8 array ``(H, W, 3)`` (FLAIR, windowed, grey in three channels).
        geometry: the pixel <-> voxel <-> RAS mapping.
        region_mask: bool ``(H, W)`` of the selection region on this slice (None without labels).
        area_mm2: area of that region on this slice in mm^2 (0 without labels).
    """

    case_id: str
    index: int
    rgb: np.ndarray
    geometry: SliceGeometry
    region_mask: np.ndarray | None = None
    area_mm2: float = 0.0
    meta: dict = field(default_factory=dict)


def _slice_axis(affine) -> int:
    direction = np.asarray(affine, float)[:3, :3]
    direction = direction / np.linalg.norm(direction, axis=0)
    return int(np.argmax(np.abs(direction[2])))


def _areas(mask: np.ndarray, axis: int) -> np.ndarray:
    other = tuple(a for a in range(3) if a != axis)
    return mask.sum(axis=other).astype(float)


def select_slices(
    affine: np.ndarray,
    region: np.ndarray | None,
    brain: np.ndarray | None,
    rule: SliceRule = SliceRule(),
) -> list[int]:
    """Slice indices chosen by ``rule``, ascending.

    Args:
        affine: volume affine (tells the axial axis and the pixel area).
        region: bool mask of the selection region (WT): the reference's for the oracle modes,
            the CNN prediction's for ``mode="cnn"``; None when there is none.
        brain: bool brain mask (for ``mode="brain"``).
        rule: the selection rule.

    Raises:
        ValueError: when the rule needs a mask that was not given, or is ``given`` (the user's
            slices come with the case: :func:`case_slices`'s ``indices``).
    """
    if rule.mode == GIVEN_MODE:
        raise ValueError(
            "Slice rule 'given' selects nothing itself: pass the user's slices to case_slices "
            "(indices=...)"
        )
    axis = _slice_axis(affine)
    norms = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    pixel_area = float(np.prod([norms[a] for a in range(3) if a != axis]))
    if rule.mode == "brain":
        if brain is None:
            raise ValueError("Slice rule 'brain' needs a brain mask")
        areas = _areas(brain, axis)
        if areas.max() == 0:
            return []
        chosen = np.flatnonzero(areas >= rule.min_brain_fraction * areas.max())[:: rule.stride]
        return _thin(chosen, areas, rule.max_slices)
    if region is None:
        what = "the CNN's predicted label map" if rule.mode == "cnn" else "a label map"
        raise ValueError(f"Slice rule {rule.mode!r} needs {what} (use mode 'brain' without)")
    areas = _areas(region, axis) * pixel_area
    if rule.mode == "largest" or (rule.mode == "cnn" and rule.max_slices):
        candidates = np.flatnonzero(areas > 0)
        order = candidates[np.argsort(-areas[candidates], kind="stable")]
        return sorted(int(i) for i in order[: rule.max_slices])
    chosen = np.flatnonzero((areas >= rule.min_area_mm2) & (areas > 0))[:: rule.stride]
    return _thin(chosen, areas, rule.max_slices)


def _thin(chosen: np.ndarray, areas: np.ndarray, limit: int | None) -> list[int]:
    """At most ``limit`` of ``chosen``, evenly spaced, always keeping the largest-area slice."""
    chosen = [int(i) for i in chosen]
    if limit is None or len(chosen) <= limit:
        return chosen
    positions = np.unique(np.round(np.linspace(0, len(chosen) - 1, limit)).astype(int))
    picked = {chosen[p] for p in positions}
    largest = max(chosen, key=lambda i: areas[i])
    if largest not in picked:
        nearest = min(picked, key=lambda i: (abs(i - largest), i))
        picked.remove(nearest)
        picked.add(largest)
    return sorted(picked)


def window_volume(
    volume: np.ndarray, window: WindowSpec = WindowSpec(), mask: np.ndarray | None = None
) -> tuple[float, float]:
    """Intensities at the window's percentiles over brain voxels (non-zero, or ``mask``)."""
    values = volume[mask] if mask is not None else volume[volume != 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [window.lower, window.upper])
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def render_slice(plane: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A 2D intensity image -> uint8 RGB ``(H, W, 3)``: ``lo`` -> 0, ``hi`` -> 255, clipped."""
    scaled = (np.asarray(plane, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def case_slices(
    case,
    rule: SliceRule = SliceRule(),
    window: WindowSpec = WindowSpec(),
    modality: str = "flair",
    prediction: np.ndarray | None = None,
    indices=None,
) -> list[SliceImage]:
    """Render the slices of ``case`` (a :class:`~GliomaCompareLib.data.case.Case`) that
    ``rule`` selects, as the VLM will see them.

    Args:
        case: the case.
        rule: the selection rule. An oracle rule on a case without reference labels falls back
            to :func:`label_free_rule` (recorded in each slice's ``meta["rule"]`` and
            ``meta["fallback"]``).
        window: FLAIR windowing.
        modality: the modality shown.
        prediction: the CNN's label map of the case (same grid), needed by ``mode="cnn"``.
        indices: the slices the user chose (``mode="given"``, and only then).

    Raises:
        ValueError: naming the case when ``mode="cnn"`` has no prediction, or the prediction's
            shape differs from the volume's; when ``mode="given"`` has no indices or one outside
            the volume (naming it), or ``indices`` come with another rule.
    """
    volume = case.modality(modality)
    brain = volume != 0
    region = None
    if case.label is not None:
        region = np.isin(case.label, case.convention.regions[rule.region])
    if rule.mode == GIVEN_MODE and indices is None:
        raise ValueError(f"{case.case_id}: slice rule 'given' needs the slices the user chose")
    if rule.mode != GIVEN_MODE and indices is not None:
        raise ValueError(
            f"{case.case_id}: slice indices are the user's slices (rule 'given'); rule "
            f"{rule.mode!r} chooses its own"
        )
    used = rule if region is not None else label_free_rule(rule, prediction is not None)
    selection = region
    if used.mode == GIVEN_MODE:
        chosen = check_slice_indices(case.case_id, indices, case.affine, volume.shape)
    elif used.mode == "cnn":
        if prediction is None:
            raise ValueError(
                f"{case.case_id}: slice rule 'cnn' needs the CNN's predicted label map of the "
                "case (run predict-cnn first)"
            )
        if tuple(prediction.shape) != tuple(volume.shape):
            raise ValueError(
                f"{case.case_id}: the CNN prediction's shape {tuple(prediction.shape)} differs "
                f"from the volume's {tuple(volume.shape)}"
            )
        selection = np.isin(prediction, case.convention.regions[used.region])
    if used.mode != GIVEN_MODE:
        chosen = tuple(select_slices(case.affine, selection, brain, used))
    fallback = {}
    if used is not rule:
        fallback = {"fallback": f"no reference labels: {rule.mode} replaced by {used.mode}"}
    lo, hi = window_volume(volume, window)
    out = []
    for index in chosen:
        geometry = SliceGeometry.axial(case.affine, volume.shape, index)
        plane = geometry.extract(volume)
        if window.scope == "slice":
            lo, hi = window_volume(plane, window)
        region_2d = geometry.extract(region) if region is not None else None
        area = 0.0
        if region_2d is not None:
            cs, rs = geometry.pixel_spacing
            area = float(region_2d.sum()) * cs * rs
        out.append(
            SliceImage(
                case_id=case.case_id,
                index=index,
                rgb=render_slice(plane, lo, hi),
                geometry=geometry,
                region_mask=region_2d,
                area_mm2=area,
                meta={
                    "modality": modality,
                    "window": [lo, hi],
                    "rule": used.to_dict(),
                    **fallback,
                },
            )
        )
    return out
