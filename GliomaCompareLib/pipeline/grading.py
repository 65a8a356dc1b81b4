"""The grading tables of the ``metrics`` stage: both arms under the same two decision rules.

A fair comparison gives the CNN and the VLM the same kind of decision rule (issue 13), so every
method is graded twice, and both rows are reported side by side:

* ``fixed``: the CNN calls HGG at P(HGG) >= 0.5; the VLM takes the majority vote of its slice
  answers (a tie is broken by the configured ``vlm.inference.tie_rule`` and counted in
  ``n_ties``). Nothing is tuned.
* ``val_threshold``: a threshold chosen on the **validation** patients by Youden's J
  (:func:`~GliomaCompareLib.metrics.decisions.choose_threshold_youden`) and applied unchanged to
  the test patients. For the CNN this is the threshold its training chose on its validation
  patients (recorded with each test prediction). For the VLM it is chosen on the patient's
  score from the ``vlm-base`` / ``vlm-finetuned`` stage's answers on the validation patients
  (``out_val/``): the HGG vote share among valid slice answers by default
  (``metrics.vlm_grade_score: vote_share``), or the mean P(HGG) over the slices
  (``mean_p``; patients whose answers carry no probability then have no score).

A patient without a score (or without a usable answer) gets no grade and is scored wrong, as
before. Intervals: Wilson intervals for the proportions (accuracy, sensitivity, specificity),
which behave at 0/n and n/n; percentile-bootstrap intervals over patients for balanced
accuracy and AUC. The AUC is computed on the patients that have a score, with their count
(``auc_n``). Each row is tested against the majority-class baseline (McNemar); pairs of
methods under the same rule are compared with McNemar and patient-bootstrap intervals of the
differences in accuracy and balanced accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from GliomaCompareLib.metrics import (
    accuracy,
    auc_with_count,
    balanced_accuracy,
    brier_score,
    choose_threshold_youden,
    classification_report,
    drop_missing_scores,
    mcnemar,
    mcnemar_vs_majority,
    paired_bootstrap_difference,
    reliability_bins,
    roc_curve_points,
    small_test_set_warning,
    wilson_interval,
)
from GliomaCompareLib.metrics.classification import encode_labels
from GliomaCompareLib.pipeline.outputs import as_float
from GliomaCompareLib.runlayout import (
    is_finetuned_method,
    vlm_method,
    vlm_methods_in,
    vlm_name_of,
)

__all__ = [
    "DECISIONS",
    "FIXED_THRESHOLD",
    "VLM_GRADE_SCORES",
    "MethodGrades",
    "by_size_rows",
    "calibration_rows",
    "classification_rows",
    "cnn_grades",
    "comparison_rows",
    "roc_rows",
    "small_test_set_banner",
    "vlm_grades",
    "vlm_patient_score",
]

#: The decision rules, in table order.
DECISIONS = ("fixed", "val_threshold")
#: The fixed rule's threshold on P(HGG) (and the vote share a majority vote passes).
FIXED_THRESHOLD = 0.5
#: What a VLM patient's score is (the score its validation threshold is chosen on).
VLM_GRADE_SCORES = ("vote_share", "mean_p")


def _compared_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs of methods compared: the CNN against each VLM method, then each VLM's base
    against its own fine-tuned model (VLMs in the order given; for the single VLM of a ``vlm:``
    run: cnn - vlm_base, cnn - vlm_finetuned, vlm_base - vlm_finetuned, as always). Two
    different VLMs are not tested against each other: the question is the CNN against each."""
    vlms = vlm_methods_in(names)
    pairs = [("cnn", m) for m in vlms if "cnn" in names]
    for base in (m for m in vlms if not is_finetuned_method(m)):
        tuned = vlm_method(vlm_name_of(base), finetuned=True)
        if tuned in vlms:
            pairs.append((base, tuned))
    return pairs


@dataclass(frozen=True)
class MethodGrades:
    """One method's grades of the patients under one decision rule.

    Attributes:
        method: ``cnn``, ``vlm_base`` ...
        model: what produced them.
        decision: one of :data:`DECISIONS`.
        grades: case id -> ``"HGG"`` / ``"LGG"`` / None (no grade: scored wrong).
        scores: case id -> the score for AUC, ROC and calibration (P(HGG), or the VLM's patient
            score); None when the patient has none. The same for both rules of a method.
        threshold: the threshold the rule applied (``score >= threshold`` is HGG; for the VLM's
            majority vote, 0.5 on the vote share with ties by the tie rule).
        threshold_n_val: validation patients the threshold was chosen on (None: not chosen
            here, or unknown).
        n_ties: patients whose vote was tied (the VLM's fixed rule), else None.
        threshold_on: the score the threshold applies to: ``p_hgg`` (the CNN), or the VLM's
            ``vote_share`` / ``mean_p``.
    """

    method: str
    model: str
    decision: str
    grades: Mapping[str, str | None]
    scores: Mapping[str, float | None] = field(default_factory=dict)
    threshold: float | None = None
    threshold_n_val: int | None = None
    n_ties: int | None = None
    threshold_on: str = "p_hgg"


# ------------------------------------------------------------------------------ decisions
def _threshold_grade(score: float | None, threshold: float) -> str | None:
    if score is None or not math.isfinite(score):
        return None
    return "HGG" if score >= threshold else "LGG"


def cnn_grades(
    method: str, model: str, predictions: Mapping[str, tuple], thresholds: Sequence[float]
) -> list[MethodGrades]:
    """The CNN's two rules from its test predictions ``case -> (grade, P(HGG))``.

    The ``val_threshold`` grades are the ones the CNN predicted with the threshold its training
    chose on the validation patients (``thresholds``: the distinct values its records hold).
    """
    scores = {c: p for c, (_, p) in predictions.items()}
    fixed = {c: _threshold_grade(p, FIXED_THRESHOLD) for c, p in scores.items()}
    tuned = {c: g for c, (g, _) in predictions.items()}
    chosen = sorted(set(thresholds))
    return [
        MethodGrades(method, model, "fixed", fixed, scores, FIXED_THRESHOLD),
        MethodGrades(method, model, "val_threshold", tuned, scores,
                     chosen[0] if len(chosen) == 1 else None),
    ]  # fmt: skip


def vlm_patient_score(row: Mapping, source: str = "vote_share") -> float | None:
    """A VLM patient row's score: HGG vote share among its valid answers, or mean P(HGG).

    Raises:
        ValueError: for a ``source`` not in :data:`VLM_GRADE_SCORES`.
    """
    if source not in VLM_GRADE_SCORES:
        raise ValueError(f"VLM grade score {source!r}: use {', '.join(VLM_GRADE_SCORES)}")
    if source == "mean_p":
        return as_float(row.get("p_hgg_mean"))
    hgg, lgg = as_float(row.get("votes_hgg")) or 0.0, as_float(row.get("votes_lgg")) or 0.0
    return hgg / (hgg + lgg) if hgg + lgg > 0 else None


def _tied(row: Mapping) -> bool:
    hgg, lgg = as_float(row.get("votes_hgg")) or 0.0, as_float(row.get("votes_lgg")) or 0.0
    return hgg > 0 and hgg == lgg


def vlm_grades(
    method: str,
    model: str,
    test_rows: Mapping[str, Mapping],
    val_rows: Mapping[str, Mapping],
    val_truth: Mapping[str, str],
    source: str = "vote_share",
) -> list[MethodGrades]:
    """A VLM method's two rules from its per-patient grade rows (``vlm_patients.csv``).

    Args:
        method, model: the method and what produced it.
        test_rows: test case id -> its grade row (``grade_pred``, ``grade_score``,
            ``votes_hgg``, ``votes_lgg``, ``p_hgg_mean``).
        val_rows: validation case id -> its grade row (from ``out_val/``); only these choose
            the threshold.
        val_truth: validation case id -> true grade (``HGG`` / ``LGG``).
        source: the patient score the threshold is chosen on (:data:`VLM_GRADE_SCORES`).
    """
    auc_scores = {c: as_float(r.get("grade_score")) for c, r in test_rows.items()}
    fixed = {c: (r.get("grade_pred") or None) for c, r in test_rows.items()}
    n_ties = sum(_tied(r) for r in test_rows.values())
    val_ids = [c for c in sorted(val_rows) if val_truth.get(c) in ("HGG", "LGG")]
    choice = choose_threshold_youden(
        [val_truth[c] for c in val_ids], [vlm_patient_score(val_rows[c], source) for c in val_ids]
    )
    tuned = {
        c: _threshold_grade(vlm_patient_score(r, source), choice.threshold)
        for c, r in test_rows.items()
    }
    return [
        MethodGrades(method, model, "fixed", fixed, auc_scores, FIXED_THRESHOLD, None, n_ties,
                     "vote_share"),
        MethodGrades(method, model, "val_threshold", tuned, auc_scores, choice.threshold,
                     choice.n_used, None, source),
    ]  # fmt: skip


# ------------------------------------------------------------------------------ classification
def _score_summary(y_true: list, scores: list, n_bootstrap: int, seed: int) -> dict:
    """AUC (on the patients with a score, with their count and a bootstrap interval) and the
    Brier score of one method's scores; the same for both of its decision rules."""
    auc = auc_with_count(y_true, scores)
    out: dict = {"auc": None if math.isnan(auc.auc) else auc.auc, "auc_n": auc.n_used}
    out["auc_ci_low"] = out["auc_ci_high"] = out["brier"] = None
    if auc.n_used == 0:
        return out
    t, s, _ = drop_missing_scores(y_true, scores)
    if ((s >= 0) & (s <= 1)).all():
        out["brier"] = brier_score(t, s)
    if out["auc"] is not None and n_bootstrap > 0:
        report = classification_report(t, t, s, n_bootstrap=n_bootstrap, seed=seed)
        low, high = report.ci.get("auc", (math.nan, math.nan))
        out["auc_ci_low"] = None if math.isnan(low) else low
        out["auc_ci_high"] = None if math.isnan(high) else high
    return out


def _wilson(k: int, n: int) -> tuple[float | None, float | None]:
    return wilson_interval(k, n) if n > 0 else (None, None)


def classification_row(
    grades: MethodGrades, truth: Mapping[str, str], case_ids: Sequence[str], score_summary: dict,
    n_bootstrap: int, seed: int,
) -> dict:  # fmt: skip
    """One ``classification`` row: counts, rates, intervals, AUC and the test against the
    majority-class baseline, for one method under one decision rule."""
    y_true = [truth[c] for c in case_ids]
    y_pred = [grades.grades.get(c) for c in case_ids]
    data = classification_report(y_true, y_pred, n_bootstrap=n_bootstrap, seed=seed).to_dict()
    n_hgg = sum(t == "HGG" for t in y_true)
    row = {
        "method": grades.method, "decision": grades.decision, "model": grades.model,
        "threshold": grades.threshold, "threshold_on": grades.threshold_on,
        "threshold_n_val": grades.threshold_n_val,
        "n_ties": grades.n_ties, "sensitivity": data.get("recall"),
        "ci_level": data.get("ci_level"), "n_bootstrap": data.get("n_bootstrap"),
    }  # fmt: skip
    for key in ("n", "tp", "fp", "tn", "fn", "n_invalid", "accuracy", "precision", "specificity",
                "f1", "balanced_accuracy", "majority_baseline_accuracy"):  # fmt: skip
        row[key] = data.get(key)
    row["accuracy_ci_low"], row["accuracy_ci_high"] = _wilson(data["tp"] + data["tn"], data["n"])
    row["sensitivity_ci_low"], row["sensitivity_ci_high"] = _wilson(data["tp"], n_hgg)
    row["specificity_ci_low"], row["specificity_ci_high"] = _wilson(data["tn"], len(y_true) - n_hgg)
    low, high = (data.get("ci") or {}).get("balanced_accuracy", (None, None))
    row["balanced_accuracy_ci_low"], row["balanced_accuracy_ci_high"] = low, high
    row.update(score_summary)
    test = mcnemar_vs_majority(y_true, y_pred, data["majority_class"]).to_dict()
    row["mcnemar_vs_majority_b"], row["mcnemar_vs_majority_c"] = test["b"], test["c"]
    row["mcnemar_vs_majority_p"] = test["p_value"]
    row["mcnemar_vs_majority_test"] = test["method"]
    return row


def _scores_of(grades: MethodGrades, case_ids: Sequence[str]) -> list:
    return [grades.scores.get(c) for c in case_ids]


def classification_rows(
    methods: Sequence[MethodGrades], truth: Mapping[str, str], case_ids: Sequence[str],
    n_bootstrap: int, seed: int,
) -> list[dict]:  # fmt: skip
    """``classification``: one row per (method, decision rule) on the patients of known grade."""
    if not case_ids:
        return []
    y_true = [truth[c] for c in case_ids]
    summaries: dict[str, dict] = {}
    rows = []
    for grades in methods:
        if grades.method not in summaries:
            scores = _scores_of(grades, case_ids)
            summaries[grades.method] = _score_summary(y_true, scores, n_bootstrap, seed)
        rows.append(
            classification_row(grades, truth, case_ids, summaries[grades.method], n_bootstrap, seed)
        )
    return rows


# ------------------------------------------------------------------------------ comparisons
def _difference(t, pa, pb, statistic, n_bootstrap: int, seed: int) -> tuple:
    if n_bootstrap < 1:
        value = statistic(t, pa) - statistic(t, pb)
        return (None if math.isnan(value) else value), None, None
    diff = paired_bootstrap_difference((t, pa), (t, pb), statistic, n_boot=n_bootstrap, seed=seed)
    data = diff.to_dict()
    return data["estimate"], data["ci_low"], data["ci_high"]


def comparison_rows(
    methods: Sequence[MethodGrades], truth: Mapping[str, str], case_ids: Sequence[str],
    n_bootstrap: int, seed: int,
) -> list[dict]:  # fmt: skip
    """``comparisons``: for each decision rule, each pair of methods graded on the same
    patients: McNemar's test and patient-bootstrap intervals of the differences (A - B) in
    accuracy and balanced accuracy (the run's seed and number of resamples)."""
    if not case_ids:
        return []
    t = encode_labels([truth[c] for c in case_ids], allow_invalid=False)
    index = {(g.method, g.decision): g for g in methods}
    rows = []
    for decision in DECISIONS:
        names = [m for m, d in index if d == decision]
        preds = {
            m: encode_labels([index[m, decision].grades.get(c) for c in case_ids],
                             allow_invalid=True)
            for m in names
        }  # fmt: skip
        for a, b in _compared_pairs(names):
            data = mcnemar(t, preds[a], preds[b]).to_dict()
            acc = _difference(t, preds[a], preds[b], accuracy, n_bootstrap, seed)
            bal = _difference(t, preds[a], preds[b], balanced_accuracy, n_bootstrap, seed)
            rows.append(
                {
                    "method_a": a, "method_b": b, "decision": decision, "n": len(case_ids),
                    "b": data.get("b"), "c": data.get("c"),
                    "statistic": data.get("statistic"), "p_value": data.get("p_value"),
                    "test": data.get("method"),
                    "accuracy_diff": acc[0], "accuracy_diff_ci_low": acc[1],
                    "accuracy_diff_ci_high": acc[2],
                    "balanced_accuracy_diff": bal[0], "balanced_accuracy_diff_ci_low": bal[1],
                    "balanced_accuracy_diff_ci_high": bal[2],
                    "n_bootstrap": n_bootstrap,
                }
            )  # fmt: skip
    return rows


# ------------------------------------------------------------------------------ ROC, calibration
def _one_per_method(methods: Sequence[MethodGrades]) -> list[MethodGrades]:
    seen, out = set(), []
    for grades in methods:
        if grades.method not in seen:
            seen.add(grades.method)
            out.append(grades)
    return out


def roc_rows(
    methods: Sequence[MethodGrades], truth: Mapping[str, str], case_ids: Sequence[str]
) -> list[dict]:
    """``roc``: the ROC curve points of each method's score (decision-independent), on the
    patients with a score."""
    rows = []
    y_true = [truth[c] for c in case_ids]
    for grades in _one_per_method(methods):
        if not case_ids:
            break
        curve = roc_curve_points(y_true, _scores_of(grades, case_ids))
        n_used = int(np.count_nonzero([s is not None for s in _scores_of(grades, case_ids)]))
        for k, (fpr, tpr, thr) in enumerate(zip(curve.fpr, curve.tpr, curve.thresholds,
                                                strict=True)):  # fmt: skip
            rows.append({"method": grades.method, "model": grades.model, "point": k,
                         "n": n_used, "fpr": float(fpr), "tpr": float(tpr),
                         "threshold": float(thr)})  # fmt: skip
    return rows


def calibration_rows(
    methods: Sequence[MethodGrades], truth: Mapping[str, str], case_ids: Sequence[str],
    n_bins: int = 10,
) -> list[dict]:  # fmt: skip
    """``calibration``: reliability-diagram bins of each method's score (patients with a score;
    a method whose scores are not probabilities in [0, 1] has no rows)."""
    rows = []
    y_true = [truth[c] for c in case_ids]
    for grades in _one_per_method(methods):
        if not case_ids:
            break
        t, s, _ = drop_missing_scores(y_true, _scores_of(grades, case_ids))
        if not s.size or not ((s >= 0) & (s <= 1)).all():
            continue
        for k, item in enumerate(reliability_bins(t, s, n_bins).rows()):
            rows.append({"method": grades.method, "model": grades.model, "bin": k, **item})
    return rows


# ------------------------------------------------------------------------------ by tumour size
def by_size_rows(
    methods: Sequence[MethodGrades], truth: Mapping[str, str], case_ids: Sequence[str],
    volume_ml: Mapping[str, float],
) -> list[dict]:  # fmt: skip
    """``grading_by_size``: accuracy (Wilson interval) of each (method, decision rule) on the
    patients whose reference whole-tumour volume is at most the median (``small``) and above
    it (``large``)."""
    sized = [c for c in case_ids if volume_ml.get(c) is not None]
    if not sized:
        return []
    median = float(np.median([volume_ml[c] for c in sized]))
    groups = {
        "small": [c for c in sized if volume_ml[c] <= median],
        "large": [c for c in sized if volume_ml[c] > median],
    }
    rows = []
    for grades in methods:
        for group, ids in groups.items():
            if not ids:
                continue
            correct = sum(grades.grades.get(c) == truth[c] for c in ids)
            low, high = wilson_interval(correct, len(ids))
            rows.append(
                {
                    "method": grades.method, "decision": grades.decision, "model": grades.model,
                    "size_group": group, "median_wt_ml": median, "n": len(ids),
                    "n_lgg": sum(truth[c] == "LGG" for c in ids),
                    "wt_ml_min": min(volume_ml[c] for c in ids),
                    "wt_ml_max": max(volume_ml[c] for c in ids),
                    "correct": correct, "accuracy": correct / len(ids),
                    "accuracy_ci_low": low, "accuracy_ci_high": high,
                }
            )  # fmt: skip
    return rows


def small_test_set_banner(truth: Mapping[str, str], case_ids: Sequence[str]) -> str | None:
    """The warning for a test set with fewer than 20 patients of a grade, else None."""
    n_lgg = sum(truth[c] == "LGG" for c in case_ids)
    return small_test_set_warning(n_lgg, len(case_ids) - n_lgg)
