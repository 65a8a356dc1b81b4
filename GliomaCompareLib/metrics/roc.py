"""ROC analysis of P(HGG) (or any score, higher = more HGG) on the patients that have a score.

A method whose score is missing for one patient (no usable VLM answer, a failed inference)
still has an AUC on the others: the patients without a score are left out **and counted**, so
a table can print "AUC 0.71 (n = 73, 1 without a score)" instead of dropping the method.

* :func:`auc_with_count`: ROC AUC (rank formula of
  :func:`~GliomaCompareLib.metrics.classification.auc_score`, ties count one half) with the
  numbers of patients used and missing.
* :func:`roc_curve_points`: the ROC curve's points, one per distinct score (tied scores move
  the curve in one diagonal step), as ``sklearn.metrics.roc_curve(drop_intermediate=False)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from GliomaCompareLib.metrics.classification import auc_score, drop_missing_scores

__all__ = ["AucWithCount", "RocCurve", "auc_with_count", "roc_curve_points"]


class AucWithCount(NamedTuple):
    """``(auc, n_used, n_missing)``.

    Attributes:
        auc: ROC AUC in [0, 1]; nan when the scored patients hold one class only (or none).
        n_used: patients with a score.
        n_missing: patients without one (None / NaN), left out.
    """

    auc: float
    n_used: int
    n_missing: int


class RocCurve(NamedTuple):
    """``(fpr, tpr, thresholds)``, each ``(k + 1,)`` for ``k`` distinct scores.

    Attributes:
        fpr: false-positive rate (1 - specificity) when calling ``score >= threshold``
            positive, non-decreasing from 0; nan throughout without negatives.
        tpr: true-positive rate (sensitivity), non-decreasing from 0; nan without positives.
        thresholds: ``inf`` (nobody positive), then the distinct scores in decreasing order.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def auc_with_count(
    y_true: Sequence, scores: Sequence, *, positive: str = "HGG", negative: str = "LGG"
) -> AucWithCount:
    """ROC AUC on the patients that have a score, with how many were used and left out.

    Args:
        y_true: ``(n,)`` true labels (class names or 1 / 0; all valid).
        scores: ``(n,)`` scores, higher = more ``positive``; None / NaN where a patient has none.
        positive: the positive class name.
        negative: the negative class name.

    Returns:
        An :class:`AucWithCount` ``(auc, n_used, n_missing)``.

    Raises:
        ValueError: for mismatched lengths, an invalid true label or an infinite score.
    """
    t, s, n_missing = drop_missing_scores(y_true, scores, positive, negative)
    auc = auc_score(t, s)
    return AucWithCount(math.nan if auc is None else auc, int(t.size), n_missing)


def roc_curve_points(
    y_true: Sequence, scores: Sequence, *, positive: str = "HGG", negative: str = "LGG"
) -> RocCurve:
    """ROC curve points on the patients that have a score (None / NaN scores are left out).

    Thresholds are the distinct scores; all patients sharing a score switch together, so ties
    make one (diagonal) step. The trapezoidal area under the points equals
    :func:`auc_with_count`'s AUC.

    Args:
        y_true: ``(n,)`` true labels (class names or 1 / 0; all valid).
        scores: ``(n,)`` scores, higher = more ``positive``.
        positive: the positive class name.
        negative: the negative class name.

    Returns:
        A :class:`RocCurve` ``(fpr, tpr, thresholds)``; with no scored patient, each holds the
        single point ``(nan, nan, inf)``.

    Raises:
        ValueError: as :func:`auc_with_count`.
    """
    t, s, _ = drop_missing_scores(y_true, scores, positive, negative)
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order].astype(np.int64)
    # the last index of each run of equal scores: every patient down to it is called positive
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if s.size else np.array([], dtype=int)
    tp = np.r_[0, np.cumsum(t)[last]].astype(float)
    fp = np.r_[0, np.cumsum(1 - t)[last]].astype(float)
    n_pos, n_neg = tp[-1], fp[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = tp / n_pos if n_pos > 0 else np.full(tp.shape, np.nan)
        fpr = fp / n_neg if n_neg > 0 else np.full(fp.shape, np.nan)
    thresholds = np.r_[np.inf, s[last]]
    return RocCurve(fpr, tpr, thresholds)
