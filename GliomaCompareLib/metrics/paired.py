"""Paired comparisons on the same patients: McNemar against the majority baseline, a patient
bootstrap of the difference between two methods, and Wilcoxon's signed-rank test for Dice.

Two methods scored on the same patients are compared patient by patient, never as two
independent samples: the patients that both get right (or both get wrong) carry no information
about which method is better, and one hard case lowers both scores at once.

* :func:`mcnemar_vs_majority`: does a method grade better than always answering the majority
  grade (79.4% HGG on BraTS 2020)? McNemar's test with the rule of
  :func:`~GliomaCompareLib.metrics.classification.mcnemar` (exact binomial when
  ``b + c < 25``, else chi-square with continuity correction).
* :func:`paired_bootstrap_difference`: percentile-bootstrap interval of ``stat(A) - stat(B)``,
  resampling **patients** (the same indices for both methods). A resample where either
  statistic is undefined (e.g. balanced accuracy without an LGG patient drawn) is skipped and
  counted in ``n_undefined``, never averaged in.
* :func:`wilcoxon_paired`: Wilcoxon signed-rank test of paired per-patient values (Dice).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from GliomaCompareLib.metrics.classification import McNemarResult, mcnemar

__all__ = [
    "PairedDifference",
    "WilcoxonResult",
    "mcnemar_vs_majority",
    "paired_bootstrap_difference",
    "wilcoxon_paired",
]


def mcnemar_vs_majority(
    y_true: Sequence,
    y_pred: Sequence,
    majority_label: str,
    *,
    positive: str = "HGG",
    negative: str = "LGG",
    exact_below: int = 25,
) -> McNemarResult:
    """McNemar's test of a method against the majority-class baseline on the same patients.

    The baseline answers ``majority_label`` for every patient (choose it from the data it is
    meant to represent, e.g. the test patients' most frequent grade, as the study's 79.4%).
    Classifier A is the method, B the baseline: ``b`` = patients the method gets right and the
    baseline wrong (true minority-grade patients the method recognises), ``c`` = patients the
    method gets wrong and the baseline right. The exact binomial test is used when
    ``b + c < exact_below`` (25), otherwise the chi-square test with continuity correction;
    ``result.method`` says which (``"exact"`` / ``"chi2_cc"``).

    Args:
        y_true: ``(n,)`` true grades (all valid).
        y_pred: ``(n,)`` the method's grades; invalid answers count as wrong.
        majority_label: the grade the baseline always answers (``positive`` or ``negative``).
        positive: the positive class name.
        negative: the negative class name.
        exact_below: discordant count below which the exact test is used.

    Returns:
        A :class:`~GliomaCompareLib.metrics.classification.McNemarResult` with the method as A
        and the baseline as B (``accuracy_b`` is the baseline accuracy).

    Raises:
        ValueError: for a ``majority_label`` that is neither class, mismatched lengths, no
            patients or an invalid true label.
    """
    label = str(majority_label).strip().lower()
    if label not in (positive.strip().lower(), negative.strip().lower()):
        raise ValueError(
            f"majority_label {majority_label!r} is neither {positive!r} nor {negative!r}"
        )
    baseline = [majority_label] * len(y_true)
    return mcnemar(
        y_true, y_pred, baseline, positive=positive, negative=negative, exact_below=exact_below
    )


@dataclass(frozen=True)
class PairedDifference:
    """A paired difference ``statistic(A) - statistic(B)`` with its patient-bootstrap interval.

    Attributes:
        estimate: the difference on all patients (nan when either statistic is undefined).
        estimate_a, estimate_b: the two statistics on all patients.
        ci_low, ci_high: percentile interval of the difference at ``confidence`` over the
            resamples where both statistics are defined (nan when there are none).
        confidence: e.g. 0.95.
        n: patients.
        n_boot: resamples drawn.
        n_undefined: resamples skipped because a statistic was undefined (nan / None).
        seed: the random seed.
    """

    estimate: float
    estimate_a: float
    estimate_b: float
    ci_low: float
    ci_high: float
    confidence: float
    n: int
    n_boot: int
    n_undefined: int
    seed: int

    @property
    def n_used(self) -> int:
        """Resamples that entered the interval."""
        return self.n_boot - self.n_undefined

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (nan becomes None)."""
        return {
            k: None if isinstance(v, float) and math.isnan(v) else v
            for k, v in self.__dict__.items()
        }


def _as_columns(values: Any, name: str) -> tuple[np.ndarray, ...]:
    """Per-patient columns: a tuple of arrays, or one array-like, each ``(n, ...)``."""
    if isinstance(values, tuple) and values and all(np.ndim(v) >= 1 for v in values):
        columns = tuple(np.asarray(v, dtype=object if _is_text(v) else None) for v in values)
    else:
        columns = (np.asarray(values, dtype=object if _is_text(values) else None),)
    n = len(columns[0])
    for column in columns:
        if column.ndim == 0 or len(column) != n:
            raise ValueError(f"{name}: every column needs one entry per patient ({n})")
    return columns


def _is_text(values: Any) -> bool:
    """True for a sequence holding strings or None (kept as objects, not fixed-width str)."""
    return not isinstance(values, np.ndarray) and any(
        v is None or isinstance(v, str) for v in values
    )


def _value(statistic: Callable[..., Any], columns: tuple[np.ndarray, ...], idx=None) -> float:
    args = columns if idx is None else tuple(c[idx] for c in columns)
    value = statistic(*args)
    return math.nan if value is None else float(value)


def paired_bootstrap_difference(
    values_a: Any,
    values_b: Any,
    statistic: Callable[..., float | None],
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedDifference:
    """Patient-bootstrap interval of ``statistic(A) - statistic(B)`` on the same patients.

    Each resample draws ``n`` patient indices with replacement and evaluates both methods on
    the **same** indices, so the interval accounts for the pairing. The interval is the
    percentile interval (``numpy.quantile``, linear interpolation) of the differences over the
    resamples where both statistics are defined; the others are counted in ``n_undefined``.
    The same ``seed`` gives the same result.

    Per-patient inputs are either one array ``(n,)`` (e.g. each patient's Dice, with
    ``statistic=numpy.mean``) or a **tuple** of arrays ``(n,)`` passed to ``statistic`` as
    separate arguments, e.g. ``(y_true, y_pred_a)`` and ``(y_true, y_pred_b)`` with
    :func:`~GliomaCompareLib.metrics.classification.accuracy` or
    :func:`~GliomaCompareLib.metrics.classification.balanced_accuracy`. Labels encoded once
    with :func:`~GliomaCompareLib.metrics.classification.encode_labels` (integer arrays) give
    the same result about three times faster than class-name strings.

    Args:
        values_a: method A's per-patient values: an array-like ``(n,)`` or a tuple of them.
        values_b: method B's, the same patients in the same order.
        statistic: maps the (resampled) per-patient values of one method to a number; nan or
            None means undefined.
        n_boot: resamples (>= 1).
        seed: random seed.
        confidence: two-sided level in (0, 1).

    Returns:
        A :class:`PairedDifference`.

    Raises:
        ValueError: for no patients, differing patient counts, ``n_boot < 1`` or a level
            outside (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    cols_a = _as_columns(values_a, "values_a")
    cols_b = _as_columns(values_b, "values_b")
    n = len(cols_a[0])
    if n == 0:
        raise ValueError("no patients to compare")
    if len(cols_b[0]) != n:
        raise ValueError(f"values_a has {n} patients but values_b has {len(cols_b[0])}")
    est_a, est_b = _value(statistic, cols_a), _value(statistic, cols_b)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n))
    diffs = np.array(
        [_value(statistic, cols_a, idx) - _value(statistic, cols_b, idx) for idx in draws]
    )
    defined = diffs[np.isfinite(diffs)]
    alpha = (1.0 - confidence) / 2.0
    if defined.size:
        low, high = (float(q) for q in np.quantile(defined, [alpha, 1.0 - alpha]))
    else:
        low = high = math.nan
    return PairedDifference(
        estimate=est_a - est_b,
        estimate_a=est_a,
        estimate_b=est_b,
        ci_low=low,
        ci_high=high,
        confidence=float(confidence),
        n=n,
        n_boot=int(n_boot),
        n_undefined=int(n_boot - defined.size),
        seed=int(seed),
    )


@dataclass(frozen=True)
class WilcoxonResult:
    """Wilcoxon signed-rank test of paired values.

    Attributes:
        statistic: scipy's statistic (the smaller of the two signed-rank sums for the
            two-sided test); nan when no pair differs.
        p_value: two-sided; 1.0 when every difference is zero; nan without pairs.
        n: pairs with a non-zero difference (the pairs the test uses).
        n_zero: pairs with a zero difference (dropped, ``zero_method="wilcox"``).
        median_difference: median of ``a - b`` over all pairs (nan without pairs).
        note: why the test could not run, else empty.
    """

    statistic: float
    p_value: float
    n: int
    n_zero: int
    median_difference: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (nan becomes None)."""
        return {
            k: None if isinstance(v, float) and math.isnan(v) else v
            for k, v in self.__dict__.items()
        }


def wilcoxon_paired(a: Sequence[float], b: Sequence[float]) -> WilcoxonResult:
    """Wilcoxon signed-rank test of paired per-patient values, e.g. two methods' Dice.

    ``scipy.stats.wilcoxon(a, b, zero_method="wilcox")``, two-sided, scipy's default method
    (exact distribution for small samples without ties, normal approximation otherwise). Pairs
    with equal values are dropped before ranking (``"wilcox"``; chosen over ``"pratt"`` so that
    ``n`` is the number of pairs that actually inform the test — many patients where both
    methods score Dice 0 say nothing about which method is better). When every difference is
    zero the test cannot run: p = 1.0 and a note, no exception.

    Args:
        a: ``(n,)`` method A's values (finite).
        b: ``(n,)`` method B's values for the same patients.

    Returns:
        A :class:`WilcoxonResult`.

    Raises:
        ValueError: for differing lengths or non-finite values (naming the position).
    """
    from scipy.stats import wilcoxon

    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"a has {x.size} values but b has {y.size}")
    bad = np.flatnonzero(~(np.isfinite(x) & np.isfinite(y)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"pair #{i} is ({x[i]}, {y[i]}); values must be finite")
    d = x - y
    n_zero = int(np.count_nonzero(d == 0))
    n = int(d.size - n_zero)
    median = float(np.median(d)) if d.size else math.nan
    if d.size == 0:
        return WilcoxonResult(math.nan, math.nan, 0, 0, median, "no pairs")
    if n == 0:
        note = f"all {n_zero} differences are zero: no evidence either way (p = 1)"
        return WilcoxonResult(math.nan, 1.0, 0, n_zero, median, note)
    res = wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
    return WilcoxonResult(float(res.statistic), float(res.pvalue), n, n_zero, median)
