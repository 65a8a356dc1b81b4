"""Collapse test for predicted tumour centres: do the predictions follow the tumours at all?

The study reports that the VLM's points "cluster near the image centre". A ratio of mean
distances from the image centre cannot tell that apart from a model that sends every answer to
one or two fixed places (which may lie anywhere). :func:`centre_collapse` compares the
predicted centres with the true centres of the same slices, without reference to the image
centre:

* **spread**: mean Euclidean distance of the points to their own centroid, predicted vs true;
  ``spread_ratio = pred_spread / true_spread``. Predictions that ignore the image vary much
  less than tumours do.
* **locations**: predicted points within ``same_location * true_spread`` of each other count
  as one location, grouped greedily (the location covering most predictions first, ties to the
  lexicographically smallest point); ``top2_share`` is the share of predictions at the two
  largest locations.

Verdict ``"collapsed"`` when ``spread_ratio < max_spread_ratio`` (0.25), or when
``top2_share >= max_top2_share`` (0.8) while the true centres are not that concentrated
themselves (their own top-two share is below 0.8, grouped with the same radius). ``"undetermined"``
with fewer than ``min_points`` usable pairs or true centres that do not vary; else
``"not collapsed"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CollapseResult", "centre_collapse"]

COLLAPSED, NOT_COLLAPSED, UNDETERMINED = "collapsed", "not collapsed", "undetermined"


@dataclass(frozen=True)
class CollapseResult:
    """Spread and concentration of predicted centres against the true centres.

    Attributes:
        n: pairs used (both centres finite).
        n_missing: pairs left out (a non-finite coordinate, e.g. no usable answer).
        pred_spread, true_spread: mean distance to the own centroid (input units).
        spread_ratio: ``pred_spread / true_spread`` (nan when ``true_spread == 0``).
        n_locations: distinct predicted locations (grouped as in the module docstring).
        top2_share: share of predictions at the two largest predicted locations.
        true_top2_share: the same for the true centres.
        verdict: ``"collapsed"``, ``"not collapsed"`` or ``"undetermined"``.
        reason: the verdict's reason in words.
        max_spread_ratio, max_top2_share, same_location: the settings used.
    """

    n: int
    n_missing: int
    pred_spread: float
    true_spread: float
    spread_ratio: float
    n_locations: int
    top2_share: float
    true_top2_share: float
    verdict: str
    reason: str
    max_spread_ratio: float
    max_top2_share: float
    same_location: float

    @property
    def collapsed(self) -> bool:
        """Whether the verdict is ``"collapsed"``."""
        return self.verdict == COLLAPSED

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (nan becomes None)."""
        return {
            k: None if isinstance(v, float) and math.isnan(v) else v
            for k, v in self.__dict__.items()
        }


def _spread(points: np.ndarray) -> float:
    if points.shape[0] == 0:
        return math.nan
    return float(np.mean(np.linalg.norm(points - points.mean(axis=0), axis=1)))


def _location_sizes(points: np.ndarray, radius: float) -> list[int]:
    """Sizes of greedy locations (largest cover first; ties to the smallest point), descending
    in the order found."""
    unique, weight = np.unique(points, axis=0, return_counts=True)  # lexicographic order
    if radius <= 0:
        return sorted(weight.tolist(), reverse=True)
    near = np.empty((len(unique), len(unique)), dtype=bool)
    for start in range(0, len(unique), 512):  # rows in chunks: bounded temporary memory
        block = unique[start : start + 512]
        dist = np.linalg.norm(block[:, None, :] - unique[None, :, :], axis=2)
        near[start : start + 512] = dist <= radius
    cover = near.astype(np.int64) @ weight
    alive = np.ones(len(unique), dtype=bool)
    sizes = []
    while alive.any():
        best = int(np.flatnonzero(alive)[np.argmax(cover[alive])])
        group = near[best] & alive
        sizes.append(int(weight[group].sum()))
        alive &= ~group
        cover -= near[:, group].astype(np.int64) @ weight[group]
    return sizes


def _points(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return np.empty((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2), got {arr.shape}")
    return arr


def _top2_share(sizes: list[int], n: int) -> float:
    return sum(sorted(sizes, reverse=True)[:2]) / n if n else math.nan


def centre_collapse(
    pred_xy: Any,
    true_xy: Any,
    *,
    max_spread_ratio: float = 0.25,
    max_top2_share: float = 0.8,
    same_location: float = 0.05,
    min_points: int = 3,
) -> CollapseResult:
    """Test whether predicted centres have collapsed (see the module docstring).

    Args:
        pred_xy: ``(n, 2)`` predicted centres, e.g. pixel ``(x, y)``; a row with a non-finite
            coordinate (no usable answer) is left out together with its true centre.
        true_xy: ``(n, 2)`` true centres of the same slices, same units.
        max_spread_ratio: collapsed when ``pred_spread < max_spread_ratio * true_spread``.
        max_top2_share: collapsed when the two largest locations hold at least this share of
            the predictions (and the true centres' two largest hold less).
        same_location: points closer than this fraction of ``true_spread`` are one location.
        min_points: fewer usable pairs give ``"undetermined"``.

    Returns:
        A :class:`CollapseResult`.

    Raises:
        ValueError: for shapes other than ``(n, 2)`` or differing ``n``.
    """
    pred, true = _points(pred_xy, "pred_xy"), _points(true_xy, "true_xy")
    if pred.shape != true.shape:
        raise ValueError(f"pred_xy has {len(pred)} centres but true_xy has {len(true)}")
    keep = np.isfinite(pred).all(axis=1) & np.isfinite(true).all(axis=1)
    pred, true = pred[keep], true[keep]
    n = len(pred)
    pred_spread, true_spread = _spread(pred), _spread(true)
    ratio = pred_spread / true_spread if n and true_spread > 0 else math.nan
    radius = same_location * true_spread if n and true_spread > 0 else 0.0
    pred_sizes = _location_sizes(pred, radius) if n else []
    top2, true_top2 = _top2_share(pred_sizes, n), _top2_share(_location_sizes(true, radius), n)

    if n < min_points or not true_spread > 0:
        verdict = UNDETERMINED
        reason = (
            f"only {n} usable centre pairs (need {min_points})"
            if n < min_points
            else "the true centres do not vary"
        )
    elif ratio < max_spread_ratio:
        verdict = COLLAPSED
        reason = f"predicted spread is {ratio:.2f} of the true spread (< {max_spread_ratio:g})"
    elif top2 >= max_top2_share and true_top2 < max_top2_share:
        verdict = COLLAPSED
        reason = (
            f"{100 * top2:.0f}% of predictions sit at {min(2, len(pred_sizes))} locations "
            f"(>= {100 * max_top2_share:.0f}%; true centres {100 * true_top2:.0f}%)"
        )
    else:
        verdict = NOT_COLLAPSED
        reason = (
            f"predicted spread is {ratio:.2f} of the true spread; the two largest of "
            f"{len(pred_sizes)} locations hold {100 * top2:.0f}% of predictions"
        )
    return CollapseResult(
        n=n,
        n_missing=int(np.count_nonzero(~keep)),
        pred_spread=pred_spread,
        true_spread=true_spread,
        spread_ratio=ratio,
        n_locations=len(pred_sizes),
        top2_share=top2,
        true_top2_share=true_top2,
        verdict=verdict,
        reason=reason,
        max_spread_ratio=float(max_spread_ratio),
        max_top2_share=float(max_top2_share),
        same_location=float(same_location),
    )
