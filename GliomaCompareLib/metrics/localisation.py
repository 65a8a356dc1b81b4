"""Like-for-like localisation: a VLM's answers scored on the slices it saw, beside the CNN on
the same slices, the best answer of the same kind (oracle) and a trivial baseline that ignores
the image.

The VLM answers one 2D slice at a time, with a point, a box or a polygon. Stacking those answers
into a volume and scoring it against the whole 3D tumour (the "3D Dice") mostly measures how few
slices were asked: perfect masks on 10 of a tumour's 69 slices score about 0.25. So every figure
here is computed on the slices the VLM was asked about, and the 3D figure is given only beside
its coverage ceiling.

Per slice (all masks bool ``(H, W)``, the slice as
:meth:`SliceGeometry.extract <GliomaCompareLib.data.slices.SliceGeometry.extract>` gives it,
scored against the reference whole tumour (WT) on that slice):

- **method**: the answer's mask (box / polygon filled, point as a disc of ``radius_mm``); a failed
  answer is an empty mask, so it scores Dice 0 (never dropped).
- **CNN**: the CNN's 3D tumour mask restricted to exactly that slice.
- **oracle**: a perfect answer of the task's kind, rendered the way answers are rendered; the same
  geometry the tasks' target answers (the fine-tuning targets) encode, before any rounding to the
  prompt's integer grid: a disc of ``radius_mm`` at the true WT centroid (:func:`oracle_point`),
  the true tight box (:func:`oracle_box`), the true bounding K-gon (:func:`oracle_polygon`: the
  convex hull of the region simplified to at most K vertices by greedy minimum-added-area edge
  removal, so it still contains the whole region; :func:`GliomaCompareLib.geometry.mask_polygon`).
  Its Dice is the *ceiling* of that kind of answer: what an exact answer scores, not the maximum
  any shape of that kind could reach (a smaller box may overlap a sparse tumour better).
- **baseline**: the mean of the training patients' true boxes / centres in normalised image
  coordinates (:class:`TrivialBaseline`), placed on every slice without looking at it (the polygon
  task gets the mean box, a 4-vertex polygon).

Slices whose reference is empty (a label-free slice rule -- brain slices, the CNN's tumour slices,
the slice on screen -- can pick them): there is no tumour to localise and the prompt forces an
answer, so the BraTS rule (both empty -> 1) would reward a failed answer. Such slices are
**skipped** for every per-slice Dice (method, CNN, oracle, baseline alike) and counted
(``n_slices_empty_reference``); they still count in the 3D figures, where an answer drawn on them
is a false positive. A patient with no scored slice is left out of every column of its row.

Aggregation (:func:`localisation_rows`): per-slice Dice averaged per patient first
(:func:`patient_means`), then over patients, so a patient asked about many slices weighs as much as
one asked about few; the interval is a percentile bootstrap over patients of that mean of patient
means (:func:`bootstrap_mean_ci`, deterministic seed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from GliomaCompareLib import geometry as g
from GliomaCompareLib.data.slices import SliceGeometry
from GliomaCompareLib.metrics.paired import paired_bootstrap_difference, wilcoxon_paired
from GliomaCompareLib.metrics.segmentation import dice

__all__ = [
    "LOCALISATION_COLUMNS",
    "POINT_RADIUS_MM",
    "TASK_KINDS",
    "CaseLocalisation",
    "TrivialBaseline",
    "bootstrap_mean_ci",
    "localisation_rows",
    "mean_training_box",
    "mean_training_centre",
    "normalised_box",
    "normalised_centre",
    "oracle_box",
    "oracle_dice",
    "oracle_mask",
    "oracle_point",
    "oracle_polygon",
    "patient_means",
    "score_case",
    "slice_dice",
]

#: The localisation task kinds (the ``kind`` of a task's answer).
TASK_KINDS: tuple[str, ...] = ("point", "box", "polygon")

#: Default disc radius (mm) that turns a point answer into a mask: the default of the VLM
#: config's ``point_radius_mm`` and of :func:`GliomaCompareLib.vlm.scoring.score_slice`.
#: Callers pass the run's value so that answers, oracle and baseline use the same disc.
POINT_RADIUS_MM: float = 10.0

#: Columns of :func:`localisation_rows` (``metrics/localisation.csv``), in order.
LOCALISATION_COLUMNS: tuple[str, ...] = (
    "method",
    "task",
    "n_patients",
    "n_slices",
    "n_slices_empty_reference",
    "dice_slices_mean",
    "dice_slices_ci_low",
    "dice_slices_ci_high",
    "cnn_dice_same_slices",
    "oracle_dice_same_slices",
    "baseline_dice_same_slices",
    "dice_slices_lenient_mean",
    "dice_3d_mean",
    "dice_3d_ceiling",
    "cnn_minus_vlm_dice",
    "cnn_minus_vlm_ci_low",
    "cnn_minus_vlm_ci_high",
    "wilcoxon_p",
    "wilcoxon_n",
)


def _check_kind(kind: str) -> None:
    if kind not in TASK_KINDS:
        raise ValueError(f"Unknown localisation kind {kind!r}; use one of {', '.join(TASK_KINDS)}")


def _mask2d(mask, name: str = "mask") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) slice mask, got shape {mask.shape}")
    return mask != 0


# --------------------------------------------------------------------------- per slice


def slice_dice(pred, ref) -> float | None:
    """Dice of a predicted slice mask against the reference on that slice.

    Args:
        pred: bool ``(H, W)`` prediction (an empty mask for a failed answer).
        ref: bool ``(H, W)`` reference.

    Returns:
        The Dice in [0, 1], or None when the reference is empty (the slice is skipped; see the
        module docstring).

    Raises:
        ValueError: for masks that are not 2D or differ in shape.
    """
    pred, ref = _mask2d(pred, "pred"), _mask2d(ref, "ref")
    if pred.shape != ref.shape:
        raise ValueError(f"slice masks differ in shape: pred {pred.shape}, ref {ref.shape}")
    if not ref.any():
        return None
    return dice(pred, ref)


# --------------------------------------------------------------------------- oracle


def oracle_point(mask, pixel_spacing=None, *, radius_mm: float = POINT_RADIUS_MM) -> np.ndarray:
    """A perfect point answer, rendered: a disc of ``radius_mm`` at the true centroid.

    Args:
        mask: bool ``(H, W)`` reference on the slice.
        pixel_spacing: ``(mm per column, mm per row)``; None = 1 mm square pixels.
        radius_mm: the disc radius point answers are drawn with.

    Returns:
        bool ``(H, W)``; empty when ``mask`` is empty (there is no centre to name).
    """
    mask = _mask2d(mask)
    if not mask.any():
        return np.zeros_like(mask)
    return g.point_to_mask(g.mask_centroid(mask), mask.shape, radius_mm, pixel_spacing)


def oracle_box(mask) -> np.ndarray:
    """A perfect box answer, rendered: the true tight bounding box, filled.

    Args:
        mask: bool ``(H, W)`` reference on the slice.

    Returns:
        bool ``(H, W)``; empty when ``mask`` is empty.
    """
    mask = _mask2d(mask)
    if not mask.any():
        return np.zeros_like(mask)
    return g.box_to_mask(g.mask_box(mask), mask.shape)


def oracle_polygon(mask, k: int) -> np.ndarray:
    """A perfect polygon answer, rendered: the true bounding polygon of at most ``k`` vertices.

    The polygon is :func:`GliomaCompareLib.geometry.mask_polygon`: the convex hull of the region
    (all its pixel squares) simplified to at most ``k`` vertices by greedy minimum-added-area
    edge removal. It contains the whole region (concavities filled), as the task asks for a
    bounding polygon, and is the answer the fine-tuning teaches.

    Args:
        mask: bool ``(H, W)`` reference on the slice.
        k: the prompt's K (>= 4).

    Returns:
        bool ``(H, W)``; empty when ``mask`` is empty.

    Raises:
        ValueError: for ``k < 4``.
    """
    if k < 4:
        raise ValueError(f"oracle_polygon: k must be >= 4, got {k}")
    mask = _mask2d(mask)
    if not mask.any():
        return np.zeros_like(mask)
    return g.polygon_to_mask(g.mask_polygon(mask, max_vertices=k), mask.shape)


def oracle_mask(
    kind: str,
    mask,
    pixel_spacing=None,
    *,
    radius_mm: float = POINT_RADIUS_MM,
    max_vertices: int | None = None,
) -> np.ndarray:
    """The oracle answer of ``kind`` (``point``, ``box``, ``polygon``) on one slice, as a mask.

    Args:
        kind: the task's answer kind.
        mask: bool ``(H, W)`` reference on the slice.
        pixel_spacing: ``(mm per column, mm per row)`` (points only).
        radius_mm: disc radius (points only).
        max_vertices: K (polygons only; required for them).

    Returns:
        bool ``(H, W)``.

    Raises:
        ValueError: for an unknown kind, or a polygon without ``max_vertices``.
    """
    _check_kind(kind)
    if kind == "point":
        return oracle_point(mask, pixel_spacing, radius_mm=radius_mm)
    if kind == "box":
        return oracle_box(mask)
    if max_vertices is None:
        raise ValueError("oracle_mask: the polygon oracle needs max_vertices (the prompt's K)")
    return oracle_polygon(mask, max_vertices)


def oracle_dice(
    kind: str,
    mask,
    pixel_spacing=None,
    *,
    radius_mm: float = POINT_RADIUS_MM,
    max_vertices: int | None = None,
) -> float | None:
    """The ceiling of ``kind`` on one slice: the oracle answer's Dice against the reference.

    Arguments as :func:`oracle_mask`. Returns None for an empty reference (slice skipped).
    """
    return slice_dice(
        oracle_mask(kind, mask, pixel_spacing, radius_mm=radius_mm, max_vertices=max_vertices),
        mask,
    )


# --------------------------------------------------------------------------- trivial baseline


def normalised_box(mask) -> tuple[float, float, float, float]:
    """The tight box of a slice mask in normalised image coordinates (edges, in [0, 1]).

    ``(x0, y0, x1, y1)`` as :func:`GliomaCompareLib.geometry.from_pixels` gives them for the
    ``"normalized"`` system: ``x0 = left edge / W``, ``x1 = right edge / W``, so boxes from
    images of different sizes can be averaged.

    Raises:
        ValueError: for an empty mask.
    """
    mask = _mask2d(mask)
    h, w = mask.shape
    return g.from_pixels(g.mask_box(mask), "normalized", w, h).as_tuple()


def normalised_centre(mask) -> tuple[float, float]:
    """The centroid of a slice mask in normalised image coordinates ``(x, y)`` in [0, 1].

    Raises:
        ValueError: for an empty mask.
    """
    mask = _mask2d(mask)
    h, w = mask.shape
    return g.from_pixels(g.mask_centroid(mask), "normalized", w, h).as_tuple()


def _mean_rows(values, width: int, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError(f"{what}: no training values to average")
    arr = arr.reshape(-1, width)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: training values must be finite")
    return arr.mean(axis=0)


def mean_training_box(boxes, shape) -> g.Box:
    """The mean of training boxes, placed on an image of ``shape`` (without looking at it).

    Args:
        boxes: ``(N, 4)`` normalised boxes ``(x0, y0, x1, y1)`` (:func:`normalised_box`).
        shape: ``(H, W)`` of the image to place the box on.

    Returns:
        The mean box in pixel coordinates of that image.

    Raises:
        ValueError: without boxes, or for non-finite values.
    """
    x0, y0, x1, y1 = _mean_rows(boxes, 4, "mean_training_box")
    h, w = (int(s) for s in shape)
    return g.to_pixels(g.Box(x0, y0, x1, y1), "normalized", w, h)


def mean_training_centre(centres, shape) -> g.Point:
    """The mean of training centres, placed on an image of ``shape`` (without looking at it).

    Args:
        centres: ``(N, 2)`` normalised centres ``(x, y)`` (:func:`normalised_centre`).
        shape: ``(H, W)`` of the image to place the point on.

    Returns:
        The mean centre in pixel coordinates of that image.

    Raises:
        ValueError: without centres, or for non-finite values.
    """
    x, y = _mean_rows(centres, 2, "mean_training_centre")
    h, w = (int(s) for s in shape)
    return g.to_pixels(g.Point(x, y), "normalized", w, h)


@dataclass(frozen=True)
class TrivialBaseline:
    """The answer a model would give without looking at the image: the training mean.

    Build it from the training patients' reference masks on the slices the run's slice rule
    picks for them (:meth:`from_masks`), never from test patients.

    Attributes:
        box: mean normalised box ``(x0, y0, x1, y1)``.
        centre: mean normalised centre ``(x, y)``.
        n: number of training slices averaged.
    """

    box: tuple[float, float, float, float]
    centre: tuple[float, float]
    n: int

    @classmethod
    def from_masks(cls, masks: Iterable) -> TrivialBaseline:
        """Average the boxes and centroids of training slice masks (empty masks are skipped).

        Args:
            masks: bool ``(H, W)`` masks; sizes may differ (coordinates are normalised).

        Raises:
            ValueError: when no mask has a foreground pixel.
        """
        boxes, centres = [], []
        for mask in masks:
            mask = _mask2d(mask)
            if mask.any():
                boxes.append(normalised_box(mask))
                centres.append(normalised_centre(mask))
        if not boxes:
            raise ValueError("TrivialBaseline.from_masks: no training mask has any tumour pixel")
        box = tuple(float(v) for v in _mean_rows(boxes, 4, "TrivialBaseline"))
        centre = tuple(float(v) for v in _mean_rows(centres, 2, "TrivialBaseline"))
        return cls(box, centre, len(boxes))  # type: ignore[arg-type]

    def geometry(self, kind: str, shape) -> g.Point | g.Box:
        """The baseline answer on an image of ``shape``: the mean centre (``point``) or the mean
        box (``box``, and ``polygon``, whose baseline is the box's 4-vertex polygon)."""
        _check_kind(kind)
        if kind == "point":
            return mean_training_centre([self.centre], shape)
        return mean_training_box([self.box], shape)

    def mask(
        self, kind: str, shape, pixel_spacing=None, *, radius_mm: float = POINT_RADIUS_MM
    ) -> np.ndarray:
        """The baseline answer rendered on an image of ``shape`` as a bool ``(H, W)`` mask
        (a point as a disc of ``radius_mm``; ``pixel_spacing`` as in :func:`oracle_point`)."""
        geometry = self.geometry(kind, shape)
        if isinstance(geometry, g.Point):
            return g.point_to_mask(geometry, shape, radius_mm, pixel_spacing)
        return g.box_to_mask(geometry, shape)


# --------------------------------------------------------------------------- one patient

SliceValues = tuple[float | None, ...]


@dataclass(frozen=True)
class CaseLocalisation:
    """One patient's like-for-like localisation scores for one (method, task).

    Per-slice tuples follow ``slice_indices`` (the asked slices, in the order given); an entry
    is None where the reference is empty on that slice (skipped, see the module docstring).

    Attributes:
        case_id: the patient.
        kind: ``point``, ``box`` or ``polygon``.
        slice_indices: axial index of each asked slice.
        dice: the method's per-slice Dice.
        oracle_dice: the oracle's per-slice Dice (the ceiling of ``kind``).
        cnn_dice: the CNN's per-slice Dice on the same slices, or None without a CNN mask.
        baseline_dice: the trivial baseline's per-slice Dice, or None without a baseline.
        lenient_dice: per-slice Dice of the lenient masks (polygon: the filled hull of the
            vertices, :func:`GliomaCompareLib.geometry.polygon_hull_mask`), or None.
        dice_3d: the method's answers stacked on the asked slices against the whole 3D
            reference (BraTS rule for an empty reference).
        dice_3d_ceiling: the oracle answers stacked on the same slices against it.
    """

    case_id: str
    kind: str
    slice_indices: tuple[int, ...]
    dice: SliceValues
    oracle_dice: SliceValues
    cnn_dice: SliceValues | None
    baseline_dice: SliceValues | None
    lenient_dice: SliceValues | None
    dice_3d: float
    dice_3d_ceiling: float

    @property
    def n_scored(self) -> int:
        """Asked slices with a non-empty reference (the ones per-slice Dice is computed on)."""
        return sum(d is not None for d in self.dice)

    @property
    def n_empty_reference(self) -> int:
        """Asked slices skipped because the reference is empty there."""
        return sum(d is None for d in self.dice)

    def means(self) -> dict[str, float | None]:
        """This patient's figures: the mean over its scored slices of each per-slice field
        (None when the field is absent or no slice was scored), and the two 3D Dice; e.g. the
        paired per-patient values for comparing the method with the CNN."""
        out: dict[str, float | None] = {}
        for name in ("dice", "oracle_dice", "cnn_dice", "baseline_dice", "lenient_dice"):
            values = getattr(self, name)
            kept = [v for v in values or () if v is not None]
            out[name] = float(np.mean(kept)) if kept else None
        out["dice_3d"] = self.dice_3d
        out["dice_3d_ceiling"] = self.dice_3d_ceiling
        return out


def _answer_mask(answer, shape: tuple[int, int], what: str) -> np.ndarray:
    if answer is None:
        return np.zeros(shape, dtype=bool)
    mask = _mask2d(answer, what)
    if mask.shape != shape:
        raise ValueError(f"{what} has shape {mask.shape}, but its slice is {shape}")
    return mask


def _check_lengths(slices, *named) -> None:
    for name, values in named:
        if values is not None and len(values) != len(slices):
            raise ValueError(f"{len(values)} {name} for {len(slices)} slices")


def score_case(
    case_id: str,
    kind: str,
    reference,
    slices: Sequence[SliceGeometry],
    answers: Sequence,
    *,
    cnn=None,
    baseline: TrivialBaseline | None = None,
    lenient_answers: Sequence | None = None,
    radius_mm: float = POINT_RADIUS_MM,
    max_vertices: int | None = None,
) -> CaseLocalisation:
    """Score one patient's answers of one task on the slices it was asked about.

    Args:
        case_id: the patient.
        kind: ``point``, ``box`` or ``polygon``.
        reference: the reference tumour (WT) volume ``(X, Y, Z)`` (non-zero = tumour).
        slices: the asked slices' geometry, each slice once.
        answers: per slice, the answer's bool mask ``(H, W)`` as scored (box / polygon filled,
            point as a disc of ``radius_mm``), or None for a failed answer (scored as empty).
        cnn: the CNN's tumour volume ``(X, Y, Z)`` (non-zero = tumour, so a BraTS label map
            can be passed as is for WT), or None.
        baseline: the trivial baseline, or None.
        lenient_answers: per slice, a lenient mask of the answer or None (polygon: the filled
            hull of its vertices, also for answers the strict parser rejected); None = no
            lenient score.
        radius_mm: disc radius of point answers (also used for the oracle and baseline).
        max_vertices: the prompt's K (required for ``polygon``).

    Returns:
        The patient's :class:`CaseLocalisation`.

    Raises:
        ValueError: for an unknown kind, mismatched lengths or shapes, or a polygon task
            without ``max_vertices``.
    """
    _check_kind(kind)
    if kind == "polygon" and max_vertices is None:
        raise ValueError("score_case: the polygon task needs max_vertices (the prompt's K)")
    _check_lengths(slices, ("answers", answers), ("lenient answers", lenient_answers))
    reference = np.asarray(reference) != 0
    cnn = None if cnn is None else np.asarray(cnn) != 0
    if cnn is not None and cnn.shape != reference.shape:
        raise ValueError(f"{case_id}: CNN volume {cnn.shape} != reference {reference.shape}")
    stacked = np.zeros(reference.shape, dtype=bool)
    ceiling = np.zeros(reference.shape, dtype=bool)
    method, oracle, by_cnn, by_base, lenient = [], [], [], [], []
    for i, geometry in enumerate(slices):
        ref = geometry.extract(reference)
        spacing = geometry.pixel_spacing
        pred = _answer_mask(answers[i], ref.shape, f"{case_id}: answer on slice {geometry.index}")
        best = oracle_mask(kind, ref, spacing, radius_mm=radius_mm, max_vertices=max_vertices)
        geometry.insert(pred, out=stacked)
        geometry.insert(best, out=ceiling)
        method.append(slice_dice(pred, ref))
        oracle.append(slice_dice(best, ref))
        if cnn is not None:
            by_cnn.append(slice_dice(geometry.extract(cnn), ref))
        if baseline is not None:
            shown = baseline.mask(kind, ref.shape, spacing, radius_mm=radius_mm)
            by_base.append(slice_dice(shown, ref))
        if lenient_answers is not None:
            loose = _answer_mask(lenient_answers[i], ref.shape, f"{case_id}: lenient answer")
            lenient.append(slice_dice(loose, ref))
    return CaseLocalisation(
        case_id=case_id,
        kind=kind,
        slice_indices=tuple(int(s.index) for s in slices),
        dice=tuple(method),
        oracle_dice=tuple(oracle),
        cnn_dice=tuple(by_cnn) if cnn is not None else None,
        baseline_dice=tuple(by_base) if baseline is not None else None,
        lenient_dice=tuple(lenient) if lenient_answers is not None else None,
        dice_3d=dice(stacked, reference),
        dice_3d_ceiling=dice(ceiling, reference),
    )


# --------------------------------------------------------------------------- aggregation


def patient_means(rows: Iterable[tuple[str, float | None]]) -> dict[str, float]:
    """Mean per patient of per-slice values.

    Args:
        rows: ``(case_id, value)`` pairs, one per slice; a None value (a skipped slice) is
            ignored.

    Returns:
        case id -> mean of its values, in order of first appearance; a patient whose values
        are all None is absent.
    """
    sums: dict[str, list[float]] = {}
    for case_id, value in rows:
        if value is None:
            continue
        sums.setdefault(case_id, []).append(float(value))
    return {case_id: float(np.mean(values)) for case_id, values in sums.items()}


def bootstrap_mean_ci(
    values: Sequence[float],
    *,
    n_bootstrap: int = 2000,
    ci_level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of per-patient values, resampling patients.

    Args:
        values: one value per patient (e.g. the patient means of :func:`patient_means`).
        n_bootstrap: resamples (0 = no interval).
        ci_level: the interval's level, in (0, 1).
        seed: random seed (the same seed and values give the same interval).

    Returns:
        ``(low, high)``, or None without values or resamples.

    Raises:
        ValueError: for a level outside (0, 1) or a negative ``n_bootstrap``.
    """
    if not 0 < ci_level < 1:
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0 or n_bootstrap == 0:
        return None
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_bootstrap, arr.size))].mean(axis=1)
    alpha = (1.0 - ci_level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _mean_of_patient_means(cases: Sequence[CaseLocalisation], field: str) -> float | None:
    """Mean over patients of the per-patient mean of ``field``; None unless every patient has
    the field (a mean over fewer patients would not be like for like)."""
    rows = []
    for case in cases:
        values = getattr(case, field)
        if values is None:
            return None
        rows.extend((case.case_id, v) for v in values)
    means = patient_means(rows)
    return float(np.mean(list(means.values()))) if means else None


def _row(
    method: str, task: str, cases: Sequence[CaseLocalisation], n_bootstrap, ci_level, seed
) -> dict:
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{method}/{task}: a patient appears twice; score each patient once")
    scored = [c for c in cases if c.n_scored > 0]
    means = patient_means((c.case_id, d) for c in scored for d in c.dice)
    ci = bootstrap_mean_ci(
        list(means.values()), n_bootstrap=n_bootstrap, ci_level=ci_level, seed=seed
    )
    return {
        "method": method,
        "task": task,
        "n_patients": len(scored),
        "n_slices": sum(c.n_scored for c in scored),
        "n_slices_empty_reference": sum(c.n_empty_reference for c in cases),
        "dice_slices_mean": float(np.mean(list(means.values()))) if means else None,
        "dice_slices_ci_low": ci[0] if ci else None,
        "dice_slices_ci_high": ci[1] if ci else None,
        "cnn_dice_same_slices": _mean_of_patient_means(scored, "cnn_dice"),
        "oracle_dice_same_slices": _mean_of_patient_means(scored, "oracle_dice"),
        "baseline_dice_same_slices": _mean_of_patient_means(scored, "baseline_dice"),
        "dice_slices_lenient_mean": _mean_of_patient_means(scored, "lenient_dice"),
        "dice_3d_mean": float(np.mean([c.dice_3d for c in scored])) if scored else None,
        "dice_3d_ceiling": float(np.mean([c.dice_3d_ceiling for c in scored])) if scored else None,
        **_paired_with_cnn(scored, n_bootstrap, ci_level, seed),
    }


def _paired_with_cnn(cases: Sequence[CaseLocalisation], n_bootstrap, ci_level, seed) -> dict:
    """The CNN's minus the method's per-patient Dice on the same slices: the mean difference,
    its patient-bootstrap percentile interval, and Wilcoxon's signed-rank test."""
    pairs = [(m["cnn_dice"], m["dice"]) for m in (c.means() for c in cases)]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    out: dict = dict.fromkeys(
        ("cnn_minus_vlm_dice", "cnn_minus_vlm_ci_low", "cnn_minus_vlm_ci_high", "wilcoxon_p",
         "wilcoxon_n")
    )  # fmt: skip
    if not pairs:
        return out
    cnn, vlm = (np.array(v, dtype=float) for v in zip(*pairs, strict=True))
    out["cnn_minus_vlm_dice"] = float(np.mean(cnn - vlm))
    if n_bootstrap:
        diff = paired_bootstrap_difference(cnn, vlm, np.mean, n_bootstrap, seed, ci_level)
        out["cnn_minus_vlm_ci_low"], out["cnn_minus_vlm_ci_high"] = diff.ci_low, diff.ci_high
    test = wilcoxon_paired(cnn, vlm)
    out["wilcoxon_p"] = None if math.isnan(test.p_value) else test.p_value
    out["wilcoxon_n"] = test.n
    return out


def localisation_rows(
    cases: Mapping[tuple[str, str], Sequence[CaseLocalisation]],
    *,
    n_bootstrap: int = 2000,
    ci_level: float = 0.95,
    seed: int = 0,
) -> list[dict]:
    """The like-for-like localisation table: one row per (method, task).

    Every column is over the row's patients with at least one scored slice (``n_patients``);
    per-slice figures are averaged per patient first, then over patients. Columns
    (:data:`LOCALISATION_COLUMNS`):

    - ``n_slices``: scored slices; ``n_slices_empty_reference``: asked slices skipped because
      the reference is empty there.
    - ``dice_slices_mean`` and its patient-bootstrap percentile interval
      ``dice_slices_ci_low`` / ``dice_slices_ci_high``.
    - ``cnn_dice_same_slices``, ``oracle_dice_same_slices``, ``baseline_dice_same_slices``,
      ``dice_slices_lenient_mean``: the same mean for the CNN, the oracle (the ceiling of the
      task's kind), the trivial baseline and the lenient masks; None unless every patient of
      the row has them.
    - ``dice_3d_mean``: mean over patients of the stacked answers' 3D Dice, beside
      ``dice_3d_ceiling``, the same for perfect answers on the same slices.
    - ``cnn_minus_vlm_dice``: mean over patients of the CNN's minus the method's per-patient
      Dice on the same slices, its patient-bootstrap interval ``cnn_minus_vlm_ci_low`` /
      ``_high``, and Wilcoxon's signed-rank test of those pairs (``wilcoxon_p``, two-sided;
      ``wilcoxon_n``: pairs that differ).

    Args:
        cases: ``(method, task)`` -> the patients' :class:`CaseLocalisation` (each patient
            once); rows follow the mapping's order.
        n_bootstrap: bootstrap resamples (0 = no interval: the bounds are None).
        ci_level: interval level.
        seed: bootstrap seed (the same for every row).

    Returns:
        One dict per (method, task), keys in :data:`LOCALISATION_COLUMNS` order; None for a
        figure that cannot be computed (no patient, no CNN ...).

    Raises:
        ValueError: when a patient appears twice in a row, or for bad bootstrap settings.
    """
    rows = []
    for (method, task), group in cases.items():
        row = _row(method, task, list(group), n_bootstrap, ci_level, seed)
        rows.append({name: row[name] for name in LOCALISATION_COLUMNS})
    return rows
