"""Consistency of repeated answers to identical inputs (e.g. a VLM asked N times per slice).

Inputs are tables of ``(items, runs)``: item ``i`` (a slice or a patient) was answered once per
run. A missing or unparseable answer is ``None`` (or NaN); it is a category of its own for the
label metrics (two runs that both failed to answer agree with each other) and is left out of the
geometric metrics (fewer repeats for that item).

* :func:`agreement`: per item, whether all runs gave the same label, and the share of runs that
  gave the item's most common label; overall, the rate of fully consistent items.
* :func:`fleiss_kappa`: Fleiss' kappa with the runs as raters (chance-corrected agreement).
* :func:`label_entropy`: per item, the Shannon entropy of its label distribution over runs.
* :func:`box_iou_spread` / :func:`polygon_iou_spread`: per item, the IoU of every pair of
  repeated boxes / polygons (pixel sets, as they are scored), summarised by mean, min and sd.
* :func:`point_dispersion_mm`: per item, the RMS distance in mm of the repeated points from
  their mean, and the largest distance between two of them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from GliomaCompareLib.geometry import Box, polygon_to_mask

__all__ = [
    "AgreementResult",
    "SpreadResult",
    "agreement",
    "box_iou",
    "box_iou_spread",
    "fleiss_kappa",
    "label_entropy",
    "point_dispersion_mm",
    "polygon_iou_spread",
]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _label_table(labels) -> list[list]:
    """``(items, runs)`` -> list of rows with hashable entries (None for missing answers)."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 2:
            raise ValueError(f"labels must be a table (items, runs), got shape {labels.shape}")
        rows = labels.tolist()
    else:
        rows = [list(r) for r in labels]
    if not rows:
        raise ValueError("labels: no items")
    n_runs = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != n_runs:
            raise ValueError(f"labels: item #{i} has {len(row)} runs, item #0 has {n_runs}")
    if n_runs < 2:
        raise ValueError(f"labels: consistency needs at least 2 runs per item, got {n_runs}")
    return [[None if _missing(v) else v for v in row] for row in rows]


@dataclass(frozen=True, eq=False)
class AgreementResult:
    """Agreement of repeated labels.

    Attributes:
        per_item: bool ``(items,)``: all runs gave the same label.
        modal_fraction: float ``(items,)``: share of runs that gave the item's most common label.
        rate: share of items with all runs identical.
        mean_modal_fraction: mean of ``modal_fraction``.
        n_items, n_runs: table size.
    """

    per_item: np.ndarray
    modal_fraction: np.ndarray
    rate: float
    mean_modal_fraction: float
    n_items: int
    n_runs: int

    def to_dict(self) -> dict:
        return {
            "rate": self.rate,
            "mean_modal_fraction": self.mean_modal_fraction,
            "n_items": self.n_items,
            "n_runs": self.n_runs,
        }


def agreement(labels) -> AgreementResult:
    """Per-item and overall "all runs identical" agreement.

    Args:
        labels: table ``(items, runs)`` of labels (any hashable; None = no answer).

    Raises:
        ValueError: for an empty or ragged table, or fewer than 2 runs.
    """
    rows = _label_table(labels)
    n_runs = len(rows[0])
    same = np.array([len(set(row)) == 1 for row in rows])
    modal = np.array([Counter(row).most_common(1)[0][1] / n_runs for row in rows])
    return AgreementResult(
        per_item=same,
        modal_fraction=modal,
        rate=float(same.mean()),
        mean_modal_fraction=float(modal.mean()),
        n_items=len(rows),
        n_runs=n_runs,
    )


def _count_table(rows: list[list]) -> np.ndarray:
    categories = sorted({v for row in rows for v in row}, key=lambda v: (v is None, str(v)))
    index = {c: k for k, c in enumerate(categories)}
    table = np.zeros((len(rows), len(categories)), dtype=np.int64)
    for i, row in enumerate(rows):
        for v in row:
            table[i, index[v]] += 1
    return table


def fleiss_kappa(labels) -> float:
    """Fleiss' kappa, the runs acting as raters.

    ``kappa = (P_bar - P_e) / (1 - P_e)`` with ``P_bar`` the mean per-item agreement among
    rater pairs, ``P_i = (sum_j n_ij^2 - n) / (n (n - 1))``, and ``P_e = sum_j p_j^2`` the chance
    agreement from the overall category shares ``p_j`` (Fleiss 1971). The same number as
    ``statsmodels.stats.inter_rater.fleiss_kappa(table, method="fleiss")``.

    Args:
        labels: table ``(items, runs)`` (None = no answer, a category of its own).

    Returns:
        kappa (1 = perfect agreement, 0 = chance level, negative = worse than chance); nan when
        every answer is the same category (chance agreement is then 1 and kappa undefined).
    """
    table = _count_table(_label_table(labels))
    n_items = table.shape[0]
    n = table[0].sum()
    p_j = table.sum(axis=0) / (n_items * n)
    p_i = ((table**2).sum(axis=1) - n) / (n * (n - 1))
    p_bar = p_i.mean()
    p_e = float((p_j**2).sum())
    if abs(1.0 - p_e) < 1e-15:
        return math.nan
    return float((p_bar - p_e) / (1.0 - p_e))


def label_entropy(labels, *, base: float = 2.0, normalize: bool = False) -> np.ndarray:
    """Shannon entropy of each item's labels over the runs.

    Args:
        labels: table ``(items, runs)`` (None = no answer, a category of its own).
        base: logarithm base (2 = bits).
        normalize: divide by ``log(min(runs, number of categories seen in the table))`` so
            that 1 is the most spread possible.

    Returns:
        float ``(items,)``; 0 where all runs agree.
    """
    rows = _label_table(labels)
    table = _count_table(rows)
    n = table[0].sum()
    p = table / n
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    h = terms.sum(axis=1) / math.log(base)
    if normalize:
        top = math.log(min(n, table.shape[1])) / math.log(base)
        h = h / top if top > 0 else np.zeros_like(h)
    return h


@dataclass(frozen=True, eq=False)
class SpreadResult:
    """A per-item spread of repeated geometric answers.

    Attributes:
        per_item: float ``(items,)``: the main value (mean pairwise IoU, or RMS dispersion in mm);
            nan for an item with fewer than 2 valid repeats.
        per_item_worst: float ``(items,)``: the worst pair: the smallest pairwise IoU, or for
            points the largest pairwise distance in mm.
        per_item_sd: float ``(items,)``: standard deviation of the pairwise values (IoU) or of
            the distances to the mean point (mm).
        n_valid: int ``(items,)``: valid repeats per item.
        mean, median: over items with a value.
        n_items: items with a value.
        measure: what ``per_item`` holds, e.g. ``"mean pairwise IoU"``.
    """

    per_item: np.ndarray
    per_item_worst: np.ndarray
    per_item_sd: np.ndarray
    n_valid: np.ndarray
    mean: float
    median: float
    n_items: int
    measure: str

    def to_dict(self) -> dict:
        return {
            "measure": self.measure,
            "mean": self.mean,
            "median": self.median,
            "n_items": self.n_items,
        }


def _summarise(per_item, per_worst, per_sd, n_valid, measure) -> SpreadResult:
    per_item = np.asarray(per_item, dtype=float)
    valid = per_item[np.isfinite(per_item)]
    return SpreadResult(
        per_item=per_item,
        per_item_worst=np.asarray(per_worst, dtype=float),
        per_item_sd=np.asarray(per_sd, dtype=float),
        n_valid=np.asarray(n_valid, dtype=int),
        mean=float(valid.mean()) if valid.size else math.nan,
        median=float(np.median(valid)) if valid.size else math.nan,
        n_items=int(valid.size),
        measure=measure,
    )


def _box_pixel_range(lo: float, hi: float, size: int | None) -> tuple[int, int]:
    """Pixel centres covered by ``[lo - 0.5, hi + 0.5)``: first and last index (last < first
    when none), clipped to ``0..size-1`` when ``size`` is given."""
    first = math.ceil(lo - 0.5)
    last = math.ceil(hi + 0.5) - 1
    if size is not None:
        first, last = max(first, 0), min(last, size - 1)
    return first, last


def box_iou(a: Box, b: Box, shape: Sequence[int] | None = None) -> float:
    """IoU of the pixel sets of two boxes (as :func:`~GliomaCompareLib.geometry.box_to_mask`
    fills them; clipped to ``shape`` = (H, W) when given). Two empty boxes give 1."""

    def ranges(box):
        w = None if shape is None else int(shape[1])
        h = None if shape is None else int(shape[0])
        return _box_pixel_range(box.x0, box.x1, w), _box_pixel_range(box.y0, box.y1, h)

    (ax0, ax1), (ay0, ay1) = ranges(a)
    (bx0, bx1), (by0, by1) = ranges(b)
    area_a = max(ax1 - ax0 + 1, 0) * max(ay1 - ay0 + 1, 0)
    area_b = max(bx1 - bx0 + 1, 0) * max(by1 - by0 + 1, 0)
    ix = max(min(ax1, bx1) - max(ax0, bx0) + 1, 0)
    iy = max(min(ay1, by1) - max(ay0, by0) + 1, 0)
    inter = ix * iy
    union = area_a + area_b - inter
    return 1.0 if union == 0 else inter / union


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def _pairwise_spread(table, iou, measure: str) -> SpreadResult:
    means, mins, sds, counts = [], [], [], []
    for row in table:
        valid = [g for g in row if g is not None]
        counts.append(len(valid))
        if len(valid) < 2:
            means.append(math.nan)
            mins.append(math.nan)
            sds.append(math.nan)
            continue
        values = np.array([iou(p, q) for p, q in combinations(valid, 2)])
        means.append(values.mean())
        mins.append(values.min())
        sds.append(values.std())
    return _summarise(means, mins, sds, counts, measure)


def box_iou_spread(boxes, shape: Sequence[int] | None = None) -> SpreadResult:
    """Pairwise IoU of repeated boxes, per item.

    Args:
        boxes: table ``(items, runs)`` of :class:`~GliomaCompareLib.geometry.Box` or None.
        shape: optional image ``(H, W)`` to clip the boxes to.

    Returns:
        :class:`SpreadResult` with the mean pairwise IoU per item (1 = identical repeats),
        the smallest pairwise IoU, and the sd of the pairwise IoUs.
    """
    table = [list(row) for row in boxes]
    return _pairwise_spread(table, lambda a, b: box_iou(a, b, shape), "mean pairwise box IoU")


def polygon_iou_spread(polygons, shape: Sequence[int]) -> SpreadResult:
    """Pairwise IoU of the pixel masks of repeated polygons, per item.

    Args:
        polygons: table ``(items, runs)`` of :class:`~GliomaCompareLib.geometry.Polygon` or None.
        shape: image ``(H, W)`` the polygons are rasterised on.

    Returns:
        :class:`SpreadResult` as for :func:`box_iou_spread`.
    """
    table = []
    for row in polygons:
        table.append(
            [None if p is None else polygon_to_mask(p, shape) for p in row]  # rasterise once
        )
    return _pairwise_spread(table, _mask_iou, "mean pairwise polygon IoU")


def point_dispersion_mm(points, pixel_spacing=(1.0, 1.0)) -> SpreadResult:
    """Dispersion in mm of repeated points, per item.

    Args:
        points: array ``(items, runs, 2)`` of ``(x, y)`` pixel coordinates; NaN rows are
            missing answers.
        pixel_spacing: ``(mm per column, mm per row)``, or an array ``(items, 2)`` when items
            come from images with different spacings.

    Returns:
        :class:`SpreadResult` with the RMS distance (mm) of the repeats from their mean point
        per item (0 = identical repeats), the largest pairwise distance in mm
        (``per_item_worst``), and the sd of the distances to the mean point.
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 3 or pts.shape[2] != 2:
        raise ValueError(f"points must be (items, runs, 2), got shape {pts.shape}")
    spacing = np.asarray(pixel_spacing, dtype=float)
    if spacing.shape == (2,):
        spacing = np.broadcast_to(spacing, (pts.shape[0], 2))
    if spacing.shape != (pts.shape[0], 2) or np.any(spacing <= 0):
        raise ValueError(
            f"pixel_spacing must be (2,) or (items, 2) of positive mm, got shape {spacing.shape}"
        )
    rms, far, sds, counts = [], [], [], []
    for item, step in zip(pts, spacing, strict=True):
        valid = item[np.all(np.isfinite(item), axis=1)] * step
        counts.append(len(valid))
        if len(valid) < 2:
            rms.append(math.nan)
            far.append(math.nan)
            sds.append(math.nan)
            continue
        d = np.linalg.norm(valid - valid.mean(axis=0), axis=1)
        rms.append(float(np.sqrt((d**2).mean())))
        sds.append(float(d.std()))
        diff = valid[:, None, :] - valid[None, :, :]
        far.append(float(np.sqrt((diff**2).sum(axis=-1)).max()))
    return _summarise(rms, far, sds, counts, "RMS distance to the mean point (mm)")
