"""Classification metrics for LGG vs HGG grading (HGG is the positive class).

* Confusion counts, accuracy, precision (PPV), negative predictive value, recall (sensitivity,
  HGG recall), specificity (LGG recall), F1, balanced accuracy, ROC AUC from scores (rank /
  Mann-Whitney formula, ties counted one half), and the majority-class baseline accuracy of the
  same patients (always answering the most frequent true class: 79.4% on BraTS 2020).
* Invalid predictions (an answer that is neither class, e.g. an unparseable VLM reply, given as
  ``None`` or any other value) are kept, not dropped: they count as wrong in accuracy, recall
  and specificity, and are excluded from precision and NPV (which are about the answers given).
  ``n_invalid`` says how many there were.
* 95% confidence intervals: percentile bootstrap resampling **patients** with replacement
  (``groups`` names each item's patient when there are several items per patient, e.g.
  slices; by default every item is one patient). A resample where a metric is undefined (e.g. no
  LGG drawn, so no specificity) is left out of that metric's interval.
* :func:`mcnemar`: paired test of two classifiers on the same patients.
* :func:`accuracy` and :func:`balanced_accuracy` as plain functions of ``(y_true, y_pred)`` (the
  same definitions as the report's, nan when undefined), e.g. the statistics of a paired
  bootstrap; :func:`encode_truth` and :func:`drop_missing_scores` prepare true labels and scores
  for the score-based statistics (AUC, ROC, calibration, thresholds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "METRIC_NAMES",
    "ClassificationReport",
    "McNemarResult",
    "accuracy",
    "auc_score",
    "balanced_accuracy",
    "classification_report",
    "drop_missing_scores",
    "encode_labels",
    "encode_truth",
    "mcnemar",
]

#: Metrics that get a bootstrap confidence interval (``auc`` only when scores are given).
METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "precision",
    "npv",
    "recall",
    "specificity",
    "f1",
    "balanced_accuracy",
    "auc",
)

# encoded labels
_NEG, _POS, _INVALID = 0, 1, -1


def encode_labels(
    values: Sequence, positive: str = "HGG", negative: str = "LGG", *, allow_invalid: bool
) -> np.ndarray:
    """Encode class labels as 1 (positive), 0 (negative) or -1 (invalid).

    Strings are compared case-insensitively after stripping; the integers 1 / 0 (and booleans)
    stand for positive / negative.

    Args:
        values: labels.
        positive: the positive class name.
        negative: the negative class name.
        allow_invalid: when False, any other value raises.

    Returns:
        int8 array ``(n,)``.

    Raises:
        ValueError: for an invalid value when ``allow_invalid`` is False, naming its position.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind in "biu":
        return _encode_integer_array(values.ravel(), allow_invalid)
    pos, neg = positive.strip().lower(), negative.strip().lower()
    out = np.empty(len(values), dtype=np.int8)
    for i, value in enumerate(values):
        code = _INVALID
        if isinstance(value, (bool, np.bool_)) or (
            isinstance(value, (int, np.integer)) and value in (0, 1)
        ):
            code = _POS if int(value) == 1 else _NEG
        elif isinstance(value, str):
            text = value.strip().lower()
            code = _POS if text == pos else _NEG if text == neg else _INVALID
        if code == _INVALID and not allow_invalid:
            raise ValueError(
                f"label #{i} is {value!r}; expected {positive!r} / {negative!r} (or 1 / 0)"
            )
        out[i] = code
    return out


def _encode_integer_array(values: np.ndarray, allow_invalid: bool) -> np.ndarray:
    """:func:`encode_labels` of an integer / boolean array, vectorised (same result)."""
    known = (values == 0) | (values == 1)
    if not allow_invalid and not known.all():
        i = int(np.flatnonzero(~known)[0])
        raise ValueError(f"label #{i} is {values[i]!r}; expected 1 / 0")
    return np.where(known, values, _INVALID).astype(np.int8)


def encode_truth(values: Sequence, positive: str = "HGG", negative: str = "LGG") -> np.ndarray:
    """Encode true labels as 1 (positive) / 0 (negative); every entry must be valid.

    Like :func:`encode_labels` with ``allow_invalid=False``, and float labels that are exactly
    1.0 / 0.0 are accepted too (a network's targets are often stored as floats).

    Args:
        values: ``(n,)`` labels: class names, 1 / 0, booleans, or floats 1.0 / 0.0.
        positive: the positive class name.
        negative: the negative class name.

    Returns:
        int8 array ``(n,)`` of 1 / 0.

    Raises:
        ValueError: for any other value, naming its position.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        values = np.asarray(values).ravel()
        known = (values == 0.0) | (values == 1.0)
        if not known.all():
            i = int(np.flatnonzero(~known)[0])
            raise ValueError(f"label #{i} is {values[i]!r}; expected 1 / 0")
        return values.astype(np.int8)
    if isinstance(values, np.ndarray) and values.dtype.kind in "biu":
        return encode_labels(values, positive, negative, allow_invalid=False)
    values = [
        int(v) if isinstance(v, (float, np.floating)) and v in (0.0, 1.0) else v for v in values
    ]
    return encode_labels(values, positive, negative, allow_invalid=False)


def drop_missing_scores(
    y_true: Sequence, scores: Sequence, positive: str = "HGG", negative: str = "LGG"
) -> tuple[np.ndarray, np.ndarray, int]:
    """Keep the patients that have a score: ``None`` and NaN scores are dropped and counted.

    Args:
        y_true: ``(n,)`` true labels (see :func:`encode_truth`).
        scores: ``(n,)`` scores, higher = more positive; ``None`` / NaN for "no score".
        positive: the positive class name.
        negative: the negative class name.

    Returns:
        ``(truth, scores, n_missing)``: int8 ``(m,)`` of 1 / 0, float ``(m,)`` and ``n - m``.

    Raises:
        ValueError: for mismatched lengths, an invalid true label or an infinite score.
    """
    t = encode_truth(y_true, positive, negative)
    s = np.asarray([np.nan if v is None else v for v in scores], dtype=float).ravel()
    if s.shape != t.shape:
        raise ValueError(f"scores has {s.size} items but y_true has {t.size}")
    if np.isinf(s).any():
        i = int(np.flatnonzero(np.isinf(s))[0])
        raise ValueError(f"score #{i} is {s[i]}; scores must be finite (or None / NaN if absent)")
    keep = ~np.isnan(s)
    return t[keep], s[keep], int(np.count_nonzero(~keep))


def accuracy(
    y_true: Sequence, y_pred: Sequence, *, positive: str = "HGG", negative: str = "LGG"
) -> float:
    """Share of correct answers; invalid answers count as wrong.

    Args:
        y_true: ``(n,)`` true labels (all valid).
        y_pred: ``(n,)`` predicted labels; anything that is neither class is a wrong answer.
        positive: the positive class name.
        negative: the negative class name.

    Returns:
        Accuracy in [0, 1]; nan for no patients.
    """
    return _metric("accuracy", y_true, y_pred, positive, negative)


def balanced_accuracy(
    y_true: Sequence, y_pred: Sequence, *, positive: str = "HGG", negative: str = "LGG"
) -> float:
    """Mean of sensitivity (positive recall) and specificity (negative recall).

    Invalid answers count as wrong, as in :func:`classification_report`.

    Args:
        y_true: ``(n,)`` true labels (all valid).
        y_pred: ``(n,)`` predicted labels.
        positive: the positive class name.
        negative: the negative class name.

    Returns:
        Balanced accuracy in [0, 1]; nan when either class is absent from ``y_true``.
    """
    return _metric("balanced_accuracy", y_true, y_pred, positive, negative)


def _metric(name: str, y_true, y_pred, positive: str, negative: str) -> float:
    """Accuracy or balanced accuracy from per-item correctness (the definitions of
    :func:`_metrics_from_counts`: an invalid answer is never correct), kept lean because a
    bootstrap calls it thousands of times."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    t = encode_truth(y_true, positive, negative)
    correct = encode_labels(y_pred, positive, negative, allow_invalid=True) == t
    if name == "accuracy":
        return float(correct.mean()) if t.size else math.nan
    n_pos = int(np.count_nonzero(t))
    if n_pos == 0 or n_pos == t.size:
        return math.nan
    recall = np.count_nonzero(correct & (t == 1)) / n_pos
    specificity = np.count_nonzero(correct & (t == 0)) / (t.size - n_pos)
    return float((recall + specificity) / 2.0)


def auc_score(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC by the rank (Mann-Whitney U) formula; ties count one half.

    Args:
        y_true: 1 for positive, 0 for negative, shape ``(n,)``.
        scores: higher means more positive, shape ``(n,)``.

    Returns:
        AUC in [0, 1], or None when one class is absent.
    """
    from scipy.stats import rankdata

    y_true = np.asarray(y_true)
    n_pos = int(np.count_nonzero(y_true == _POS))
    n_neg = int(np.count_nonzero(y_true == _NEG))
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=float))  # average ranks for ties
    u = ranks[y_true == _POS].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _ratio(num, den):
    """num / den elementwise, nan where den == 0."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _metrics_from_counts(c: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from counts ``(..., 6)``: tp, fp, tn, fn, invalid_pos, invalid_neg."""
    tp, fp, tn, fn, ip, ineg = (c[..., k].astype(float) for k in range(6))
    n = tp + fp + tn + fn + ip + ineg
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn + ip)
    specificity = _ratio(tn, tn + fp + ineg)
    # 2TP / (2TP + FP + FN): equals 2PR / (P + R) where both exist, and 0 (not undefined) for
    # a classifier that never finds a positive; invalid answers on positives count as FN
    f1 = _ratio(2 * tp, 2 * tp + fp + fn + ip)
    return {
        "accuracy": _ratio(tp + tn, n),
        "precision": precision,
        "npv": _ratio(tn, tn + fn),
        "recall": recall,
        "specificity": specificity,
        "f1": f1,
        "balanced_accuracy": (recall + specificity) / 2.0,
    }


def _counts(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-item one-hot counts ``(n, 6)``: tp, fp, tn, fn, invalid_pos, invalid_neg."""
    out = np.zeros((len(t), 6), dtype=np.int64)
    out[:, 0] = (t == _POS) & (p == _POS)
    out[:, 1] = (t == _NEG) & (p == _POS)
    out[:, 2] = (t == _NEG) & (p == _NEG)
    out[:, 3] = (t == _POS) & (p == _NEG)
    out[:, 4] = (t == _POS) & (p == _INVALID)
    out[:, 5] = (t == _NEG) & (p == _INVALID)
    return out


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


@dataclass(frozen=True)
class ClassificationReport:
    """Binary classification results (HGG = positive class).

    Attributes:
        n: patients (items) scored.
        tp, fp, tn, fn: confusion counts over valid predictions.
        n_invalid: predictions that were neither class (counted wrong, see module docs).
        accuracy, precision, npv, recall, specificity, f1, balanced_accuracy: in [0, 1], or
            nan when undefined (e.g. no positive prediction gives no precision).
        auc: ROC AUC from the scores, None without scores or with one class only.
        majority_class: the most frequent true class (ties go to the positive class).
        majority_baseline_accuracy: accuracy of always answering ``majority_class``.
        ci: metric name -> (low, high) percentile-bootstrap interval at ``ci_level``
            (nan bounds when the metric is undefined in every resample).
        ci_level: e.g. 0.95.
        n_bootstrap: bootstrap resamples; seed: their random seed.
        n_groups: resampling units (patients).
        positive, negative: the class names.
    """

    n: int
    tp: int
    fp: int
    tn: int
    fn: int
    n_invalid: int
    accuracy: float
    precision: float
    npv: float
    recall: float
    specificity: float
    f1: float
    balanced_accuracy: float
    auc: float | None
    majority_class: str
    majority_baseline_accuracy: float
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    ci_level: float = 0.95
    n_bootstrap: int = 0
    seed: int = 0
    n_groups: int = 0
    positive: str = "HGG"
    negative: str = "LGG"

    @property
    def sensitivity(self) -> float:
        """Recall of the positive class (HGG)."""
        return self.recall

    @property
    def confusion_matrix(self) -> np.ndarray:
        """``[[tn, fp], [fn, tp]]`` (rows: true negative / positive), invalid answers excluded."""
        return np.array([[self.tn, self.fp], [self.fn, self.tp]])

    def to_dict(self) -> dict:
        """A JSON-able dict (nan becomes None)."""
        out = {
            k: getattr(self, k)
            for k in (
                "n",
                "tp",
                "fp",
                "tn",
                "fn",
                "n_invalid",
                "accuracy",
                "precision",
                "npv",
                "recall",
                "specificity",
                "f1",
                "balanced_accuracy",
                "auc",
                "majority_class",
                "majority_baseline_accuracy",
                "ci_level",
                "n_bootstrap",
                "seed",
                "n_groups",
                "positive",
                "negative",
            )
        }
        out = {k: _nan_to_none(v) if isinstance(v, float) else v for k, v in out.items()}
        out["ci"] = {
            k: [_nan_to_none(float(lo)), _nan_to_none(float(hi))] for k, (lo, hi) in self.ci.items()
        }
        return out

    def summary(self) -> str:
        """A few human-readable lines."""
        pct = round(self.ci_level * 100)

        def fmt(name: str) -> str:
            value = getattr(self, name)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return f"{name} n/a"
            lo, hi = self.ci.get(name, (math.nan, math.nan))
            ci = "" if math.isnan(lo) else f" ({pct}% CI {lo:.3f}-{hi:.3f})"
            return f"{name} {value:.3f}{ci}"

        names = ["accuracy", "recall", "specificity", "precision", "f1", "balanced_accuracy"]
        if self.auc is not None:
            names.append("auc")
        lines = [
            f"n={self.n} ({self.positive} positive): TP {self.tp}  FP {self.fp}  TN {self.tn}  "
            f"FN {self.fn}  invalid {self.n_invalid}",
            "; ".join(fmt(m) for m in names),
            f"majority-class baseline ({self.majority_class}) accuracy "
            f"{self.majority_baseline_accuracy:.3f}",
        ]
        return "\n".join(lines)


def classification_report(
    y_true: Sequence,
    y_pred: Sequence,
    scores: Sequence[float] | None = None,
    *,
    positive: str = "HGG",
    negative: str = "LGG",
    groups: Sequence | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> ClassificationReport:
    """Score predicted grades against true grades.

    Args:
        y_true: true class per item: ``"HGG"`` / ``"LGG"`` (or 1 / 0); every entry must be valid.
        y_pred: predicted class per item; anything that is neither class is an invalid answer.
        scores: optional score per item, higher = more ``positive`` (e.g. P(HGG)), for the AUC.
        positive: positive class name (HGG).
        negative: negative class name (LGG).
        groups: optional patient id per item; the bootstrap resamples patients (all items of a
            drawn patient come along). Default: each item is its own patient.
        n_bootstrap: bootstrap resamples (0 = no confidence intervals).
        seed: random seed of the bootstrap.
        ci: confidence level in (0, 1).

    Returns:
        A :class:`ClassificationReport`.

    Raises:
        ValueError: for mismatched lengths, no items, an invalid true label, non-finite scores
            or a bad ``ci``.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("no items to score")
    t = encode_labels(list(y_true), positive, negative, allow_invalid=False)
    p = encode_labels(list(y_pred), positive, negative, allow_invalid=True)
    s = None
    if scores is not None:
        s = np.asarray([np.nan if v is None else v for v in scores], dtype=float)
        if s.shape != t.shape:
            raise ValueError(f"scores has {s.size} items but y_true has {t.size}")
        bad = np.flatnonzero(~np.isfinite(s))
        if bad.size:
            raise ValueError(f"scores must be finite; item #{int(bad[0])} is {s[bad[0]]}")
    if groups is None:
        group_index = np.arange(len(t))
    else:
        if len(groups) != len(t):
            raise ValueError(f"groups has {len(groups)} items but y_true has {len(t)}")
        _, group_index = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    n_groups = int(group_index.max()) + 1

    per_item = _counts(t, p)
    totals = per_item.sum(axis=0)
    point = {k: float(v) for k, v in _metrics_from_counts(totals).items()}
    auc = auc_score(t, s) if s is not None else None
    n_pos = int(np.count_nonzero(t == _POS))
    majority = positive if n_pos >= len(t) - n_pos else negative
    baseline = max(n_pos, len(t) - n_pos) / len(t)

    intervals: dict[str, tuple[float, float]] = {}
    if n_bootstrap > 0:
        intervals = _bootstrap(per_item, group_index, n_groups, t, s, n_bootstrap, seed, ci)
    return ClassificationReport(
        n=len(t),
        tp=int(totals[0]),
        fp=int(totals[1]),
        tn=int(totals[2]),
        fn=int(totals[3]),
        n_invalid=int(totals[4] + totals[5]),
        **point,
        auc=auc,
        majority_class=majority,
        majority_baseline_accuracy=float(baseline),
        ci=intervals,
        ci_level=float(ci),
        n_bootstrap=int(n_bootstrap),
        seed=int(seed),
        n_groups=n_groups,
        positive=positive,
        negative=negative,
    )


def _bootstrap(per_item, group_index, n_groups, t, s, n_bootstrap, seed, level):
    rng = np.random.default_rng(seed)
    group_counts = np.zeros((n_groups, per_item.shape[1]), dtype=np.int64)
    np.add.at(group_counts, group_index, per_item)
    draws = rng.integers(0, n_groups, size=(n_bootstrap, n_groups))
    sampled = group_counts[draws].sum(axis=1)  # (B, 6)
    values = _metrics_from_counts(sampled)
    if s is not None:
        members = [np.flatnonzero(group_index == g) for g in range(n_groups)]
        aucs = np.full(n_bootstrap, np.nan)
        for b in range(n_bootstrap):
            idx = np.concatenate([members[g] for g in draws[b]])
            value = auc_score(t[idx], s[idx])
            if value is not None:
                aucs[b] = value
        values["auc"] = aucs
    alpha = (1.0 - level) / 2.0
    out = {}
    for name in METRIC_NAMES:
        if name not in values:
            continue
        v = values[name]
        v = v[np.isfinite(v)]
        if v.size == 0:
            out[name] = (math.nan, math.nan)
        else:
            lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
            out[name] = (float(lo), float(hi))
    return out


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's paired test of two classifiers on the same patients.

    Attributes:
        n: patients.
        b: patients classifier A got right and B got wrong.
        c: patients A got wrong and B got right.
        both_correct, both_wrong: the concordant cells.
        statistic: ``min(b, c)`` for the exact test; ``(|b - c| - 1)^2 / (b + c)`` for the
            chi-square test (0 when b + c = 0).
        p_value: two-sided.
        method: ``"exact"`` (binomial, used when b + c < 25) or ``"chi2_cc"`` (chi-square with
            one degree of freedom and Edwards' continuity correction).
        accuracy_a, accuracy_b: the two accuracies on these patients.
    """

    n: int
    b: int
    c: int
    both_correct: int
    both_wrong: int
    statistic: float
    p_value: float
    method: str
    accuracy_a: float
    accuracy_b: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def mcnemar(
    y_true: Sequence,
    pred_a: Sequence,
    pred_b: Sequence,
    *,
    positive: str = "HGG",
    negative: str = "LGG",
    exact_below: int = 25,
) -> McNemarResult:
    """McNemar's test: do classifiers A and B differ in accuracy on the same patients?

    Only the discordant patients matter: ``b`` (A right, B wrong) and ``c`` (A wrong, B right).
    Under the null hypothesis each discordant patient is equally likely to fall either way. When
    ``b + c < exact_below`` (25, the usual rule of thumb for the chi-square approximation to be
    adequate) the exact two-sided binomial test is used, ``p = min(1, 2 P(X <= min(b, c)))`` with
    ``X ~ Binomial(b + c, 1/2)``; otherwise the chi-square statistic with continuity correction.
    These match ``statsmodels.stats.contingency_tables.mcnemar(exact=..., correction=True)``.
    Invalid answers count as wrong.

    Raises:
        ValueError: for mismatched lengths, no patients or an invalid true label.
    """
    from scipy.stats import binom, chi2

    if not (len(y_true) == len(pred_a) == len(pred_b)):
        raise ValueError(
            f"lengths differ: y_true {len(y_true)}, pred_a {len(pred_a)}, pred_b {len(pred_b)}"
        )
    if len(y_true) == 0:
        raise ValueError("no patients to compare")
    t = encode_labels(list(y_true), positive, negative, allow_invalid=False)
    a_ok = encode_labels(list(pred_a), positive, negative, allow_invalid=True) == t
    b_ok = encode_labels(list(pred_b), positive, negative, allow_invalid=True) == t
    b = int(np.count_nonzero(a_ok & ~b_ok))
    c = int(np.count_nonzero(~a_ok & b_ok))
    both_correct = int(np.count_nonzero(a_ok & b_ok))
    both_wrong = int(np.count_nonzero(~a_ok & ~b_ok))
    if b + c < exact_below:
        method = "exact"
        statistic = float(min(b, c))
        p_value = 1.0 if b + c == 0 else min(1.0, 2.0 * float(binom.cdf(min(b, c), b + c, 0.5)))
    else:
        method = "chi2_cc"
        statistic = (abs(b - c) - 1.0) ** 2 / (b + c)
        p_value = float(chi2.sf(statistic, 1))
    return McNemarResult(
        n=len(t),
        b=b,
        c=c,
        both_correct=both_correct,
        both_wrong=both_wrong,
        statistic=float(statistic),
        p_value=float(p_value),
        method=method,
        accuracy_a=float(a_ok.mean()),
        accuracy_b=float(b_ok.mean()),
    )
