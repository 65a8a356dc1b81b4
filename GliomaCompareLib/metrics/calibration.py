"""Calibration of predicted probabilities P(HGG): reliability diagram bins and the Brier score.

An accuracy says how often the thresholded grade is right; calibration says whether a stated
P(HGG) = 0.8 comes true about 80% of the time (a VLM that answers HGG for nearly everyone with
P = 0.99 is badly calibrated even where its accuracy looks fine).

* :func:`reliability_bins`: equal-width bins on [0, 1]; per non-empty bin the mean predicted
  probability, the observed HGG frequency and the count (the points of a reliability diagram,
  as ``sklearn.calibration.calibration_curve(strategy="uniform")``).
* :func:`brier_score`: mean squared difference between probability and outcome (0 perfect;
  0.25 for always answering 0.5), as ``sklearn.metrics.brier_score_loss``.

Both need a probability for every patient given; leave out the patients without one with
:func:`~GliomaCompareLib.metrics.classification.drop_missing_scores` and report the count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from GliomaCompareLib.metrics.classification import encode_truth

__all__ = ["ReliabilityBins", "brier_score", "reliability_bins"]


@dataclass(frozen=True, eq=False)
class ReliabilityBins:
    """The non-empty bins of a reliability diagram, each array ``(k,)`` for ``k`` bins.

    Attributes:
        bin_low, bin_high: the bin's edges; a bin holds ``bin_low < p <= bin_high`` (the first
            one also ``p = 0``).
        mean_predicted: mean probability of the bin's patients.
        observed: share of positives (HGG) among them.
        count: patients in the bin.
        n_bins: bins the interval [0, 1] was cut into (empty ones are omitted).
    """

    bin_low: np.ndarray
    bin_high: np.ndarray
    mean_predicted: np.ndarray
    observed: np.ndarray
    count: np.ndarray
    n_bins: int

    def rows(self) -> list[dict[str, float | int]]:
        """One dict per bin: ``bin_low, bin_high, mean_predicted, observed, count``."""
        return [
            {
                "bin_low": float(lo),
                "bin_high": float(hi),
                "mean_predicted": float(mp),
                "observed": float(ob),
                "count": int(c),
            }
            for lo, hi, mp, ob, c in zip(
                self.bin_low,
                self.bin_high,
                self.mean_predicted,
                self.observed,
                self.count,
                strict=True,
            )
        ]


def _checked(y_true, prob, positive: str, negative: str) -> tuple[np.ndarray, np.ndarray]:
    t = encode_truth(y_true, positive, negative).astype(float)
    p = np.asarray([np.nan if v is None else v for v in prob], dtype=float).ravel()
    if p.shape != t.shape:
        raise ValueError(f"prob has {p.size} items but y_true has {t.size}")
    bad = np.flatnonzero(~((p >= 0.0) & (p <= 1.0)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"probability #{i} is {p[i]}; need values in [0, 1] (leave out patients without a "
            "probability with drop_missing_scores)"
        )
    return t, p


def reliability_bins(
    y_true: Sequence,
    prob: Sequence[float],
    n_bins: int = 10,
    *,
    positive: str = "HGG",
    negative: str = "LGG",
) -> ReliabilityBins:
    """Reliability-diagram points from equal-width probability bins; empty bins are omitted.

    The edges are ``numpy.linspace(0, 1, n_bins + 1)``; a probability on an inner edge falls in
    the lower bin (the bins are right-closed), as in scikit-learn.

    Args:
        y_true: ``(n,)`` true labels (class names or 1 / 0; all valid).
        prob: ``(n,)`` P(positive) in [0, 1] (no missing values).
        n_bins: bins (>= 1).
        positive: the positive class name.
        negative: the negative class name.

    Returns:
        A :class:`ReliabilityBins` (no bins when ``n == 0``).

    Raises:
        ValueError: for ``n_bins < 1``, mismatched lengths, an invalid label or a probability
            outside [0, 1] (including None / NaN).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    t, p = _checked(y_true, prob, positive, negative)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(ids, minlength=n_bins)
    sums = np.bincount(ids, weights=p, minlength=n_bins)
    hits = np.bincount(ids, weights=t, minlength=n_bins)
    used = count > 0
    return ReliabilityBins(
        bin_low=edges[:-1][used],
        bin_high=edges[1:][used],
        mean_predicted=sums[used] / count[used],
        observed=hits[used] / count[used],
        count=count[used],
        n_bins=int(n_bins),
    )


def brier_score(
    y_true: Sequence, prob: Sequence[float], *, positive: str = "HGG", negative: str = "LGG"
) -> float:
    """Brier score: ``mean((prob - y)^2)`` with ``y`` 1 for positive, 0 for negative.

    Args:
        y_true: ``(n,)`` true labels (class names or 1 / 0; all valid).
        prob: ``(n,)`` P(positive) in [0, 1] (no missing values).
        positive: the positive class name.
        negative: the negative class name.

    Returns:
        The score in [0, 1] (lower is better); nan when ``n == 0``.

    Raises:
        ValueError: as :func:`reliability_bins`.
    """
    t, p = _checked(y_true, prob, positive, negative)
    return float(np.mean((p - t) ** 2)) if t.size else float("nan")
