"""The metrics stage's grading row builders (GliomaCompareLib.pipeline.grading) on hand-made
patients: both decision rules for both arms, Wilson intervals, AUC with a missing score, McNemar
against the majority baseline, paired differences, ROC, calibration and the size breakdown."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from GliomaCompareLib.metrics import (
    accuracy,
    auc_with_count,
    balanced_accuracy,
    brier_score,
    choose_threshold_youden,
    mcnemar,
    mcnemar_vs_majority,
    paired_bootstrap_difference,
    reliability_bins,
    wilson_interval,
)
from GliomaCompareLib.pipeline.grading import (
    MethodGrades,
    by_size_rows,
    calibration_rows,
    classification_rows,
    cnn_grades,
    comparison_rows,
    roc_rows,
    small_test_set_banner,
    vlm_grades,
    vlm_patient_score,
)
from GliomaCompareLib.runlayout import TABLES, read_table, write_table

# 5 HGG, 3 LGG test patients
TRUTH = {f"t{i}": g for i, g in enumerate(["HGG"] * 5 + ["LGG"] * 3)}
IDS = sorted(TRUTH)


def _vlm_row(hgg: int, lgg: int, pred: str | None = None, p_mean: float | None = None) -> dict:
    share = hgg / (hgg + lgg) if hgg + lgg else 0.5
    if pred is None:
        pred = "HGG" if hgg > lgg else "LGG" if lgg > hgg else ("HGG" if hgg else "")
    return {
        "task": "grade",
        "run": "0",
        "grade_pred": pred,
        "votes_hgg": str(hgg),
        "votes_lgg": str(lgg),
        "grade_score": str(p_mean if p_mean is not None else share),
        "p_hgg_mean": "" if p_mean is None else str(p_mean),
    }


def _perfect(method: str = "m", decision: str = "fixed") -> MethodGrades:
    scores = {c: 0.9 if TRUTH[c] == "HGG" else 0.1 for c in IDS}
    return MethodGrades(method, "model", decision, dict(TRUTH), scores, 0.5)


def test_three_of_three_specificity_gets_a_wilson_interval_not_one_one():
    (row,) = classification_rows([_perfect()], TRUTH, IDS, n_bootstrap=200, seed=0)
    assert row["specificity"] == 1.0 and row["tn"] == 3
    low, high = wilson_interval(3, 3)
    assert (row["specificity_ci_low"], row["specificity_ci_high"]) == (low, high)
    assert row["specificity_ci_low"] < 0.5 and row["specificity_ci_high"] == 1.0
    assert (row["sensitivity_ci_low"], row["sensitivity_ci_high"]) == wilson_interval(5, 5)
    assert (row["accuracy_ci_low"], row["accuracy_ci_high"]) == wilson_interval(8, 8)
    # balanced accuracy keeps a bootstrap interval; AUC too
    assert row["balanced_accuracy_ci_low"] == 1.0 and row["auc"] == 1.0 and row["auc_n"] == 8


def test_auc_with_one_missing_score_keeps_the_others_and_counts_them():
    scores = {"t0": 0.9, "t1": None, "t2": 0.4, "t3": 0.8, "t4": 0.7, "t5": 0.5, "t6": 0.1,
              "t7": 0.3}  # fmt: skip
    grades = MethodGrades("m", "model", "fixed", dict(TRUTH), scores, 0.5)
    (row,) = classification_rows([grades], TRUTH, IDS, n_bootstrap=100, seed=0)
    expected = auc_with_count([TRUTH[c] for c in IDS], [scores[c] for c in IDS])
    assert row["auc_n"] == 7 == expected.n_used
    assert row["auc"] == pytest.approx(expected.auc)
    assert row["auc_ci_low"] is not None and row["auc_ci_low"] <= row["auc"] <= row["auc_ci_high"]
    kept = [c for c in IDS if scores[c] is not None]
    assert row["brier"] == pytest.approx(
        brier_score([TRUTH[c] for c in kept], [scores[c] for c in kept])
    )


def test_mcnemar_vs_majority_matches_metrics_paired():
    pred = {"t0": "HGG", "t1": "LGG", "t2": "HGG", "t3": None, "t4": "HGG", "t5": "LGG",
            "t6": "LGG", "t7": "HGG"}  # fmt: skip
    grades = MethodGrades("m", "model", "fixed", pred, {}, 0.5)
    (row,) = classification_rows([grades], TRUTH, IDS, n_bootstrap=0, seed=0)
    ref = mcnemar_vs_majority([TRUTH[c] for c in IDS], [pred[c] for c in IDS], "HGG")
    assert (row["mcnemar_vs_majority_b"], row["mcnemar_vs_majority_c"]) == (ref.b, ref.c) == (2, 2)
    assert row["mcnemar_vs_majority_p"] == ref.p_value
    assert row["mcnemar_vs_majority_test"] == ref.method == "exact"
    assert row["auc"] is None and row["auc_n"] == 0 and row["n_invalid"] == 1


def test_vlm_threshold_is_chosen_on_val_patients_only_and_applied_to_test():
    # validation: HGG patients vote share >= 0.6, LGG ones <= 0.4 -> Youden picks 0.5 (between)
    val_truth = {"v0": "HGG", "v1": "HGG", "v2": "LGG", "v3": "LGG"}
    val_rows = {"v0": _vlm_row(3, 2), "v1": _vlm_row(4, 1), "v2": _vlm_row(2, 3),
                "v3": _vlm_row(1, 4)}  # fmt: skip
    # test: the majority vote says HGG for everyone (shares 0.8, 0.8, 0.6, 0.6 ...); on the test
    # patients alone a threshold of 0.7 would be perfect, but the val threshold must be used
    test_rows = {
        "t0": _vlm_row(4, 1), "t1": _vlm_row(4, 1), "t2": _vlm_row(4, 1), "t3": _vlm_row(4, 1),
        "t4": _vlm_row(4, 1), "t5": _vlm_row(3, 2), "t6": _vlm_row(3, 2), "t7": _vlm_row(2, 2),
    }  # fmt: skip
    fixed, tuned = vlm_grades("vlm_base", "tiny", test_rows, val_rows, val_truth)
    choice = choose_threshold_youden(
        [val_truth[c] for c in sorted(val_rows)],
        [vlm_patient_score(val_rows[c]) for c in sorted(val_rows)],
    )
    assert tuned.decision == "val_threshold" and tuned.threshold == choice.threshold
    assert tuned.threshold_n_val == 4
    assert 0.4 < tuned.threshold <= 0.6
    assert all(tuned.grades[c] == "HGG" for c in IDS)  # 0.6 and 0.5 are >= the val threshold
    # the tie (2 vs 2) is counted on the fixed rule, decided by the tie rule's grade_pred
    assert fixed.n_ties == 1 and tuned.n_ties is None
    assert fixed.grades["t7"] == "HGG" and fixed.threshold == 0.5
    # a threshold chosen on the test patients would differ: the val one is really used
    on_test = choose_threshold_youden(
        [TRUTH[c] for c in IDS], [vlm_patient_score(test_rows[c]) for c in IDS]
    )
    assert on_test.threshold != tuned.threshold


def test_vlm_without_val_answers_keeps_half_and_says_none_were_used():
    test_rows = {c: _vlm_row(1, 0) for c in IDS}
    _, tuned = vlm_grades("vlm_base", "tiny", test_rows, {}, {})
    assert tuned.threshold == 0.5 and tuned.threshold_n_val == 0


def test_vlm_mean_p_score_and_unknown_source():
    row = _vlm_row(1, 3, p_mean=0.8)
    assert vlm_patient_score(row, "mean_p") == 0.8 and vlm_patient_score(row) == 0.25
    assert vlm_patient_score(_vlm_row(0, 0)) is None
    with pytest.raises(ValueError, match="vote_share"):
        vlm_patient_score(row, "median")


def test_cnn_fixed_rule_is_half_and_tuned_rule_keeps_its_val_threshold():
    preds = {"t0": ("HGG", 0.45), "t1": ("LGG", 0.2), "t5": ("LGG", 0.3), "t6": (None, None)}
    fixed, tuned = cnn_grades("cnn", "net", preds, [0.4, 0.4])
    assert fixed.grades == {"t0": "LGG", "t1": "LGG", "t5": "LGG", "t6": None}
    assert tuned.grades == {"t0": "HGG", "t1": "LGG", "t5": "LGG", "t6": None}
    assert (fixed.threshold, tuned.threshold) == (0.5, 0.4)
    assert cnn_grades("cnn", "net", preds, [0.4, 0.3])[1].threshold is None


def test_comparisons_pair_methods_under_the_same_rule_with_bootstrap_differences():
    a_pred = dict(TRUTH) | {"t5": "HGG"}
    b_pred = dict.fromkeys(IDS, "HGG")
    methods = [
        MethodGrades("cnn", "x", "fixed", a_pred),
        MethodGrades("cnn", "x", "val_threshold", dict(TRUTH)),
        MethodGrades("vlm_base", "y", "fixed", b_pred),
        MethodGrades("vlm_base", "y", "val_threshold", b_pred),
    ]
    rows = comparison_rows(methods, TRUTH, IDS, n_bootstrap=300, seed=4)
    assert [(r["decision"], r["method_a"], r["method_b"]) for r in rows] == [
        ("fixed", "cnn", "vlm_base"),
        ("val_threshold", "cnn", "vlm_base"),
    ]
    y = [TRUTH[c] for c in IDS]
    pa, pb = [a_pred[c] for c in IDS], [b_pred[c] for c in IDS]
    ref = mcnemar(y, pa, pb)
    assert (rows[0]["b"], rows[0]["c"], rows[0]["p_value"]) == (ref.b, ref.c, ref.p_value)
    diff = paired_bootstrap_difference((y, pa), (y, pb), accuracy, n_boot=300, seed=4)
    assert rows[0]["accuracy_diff"] == pytest.approx(diff.estimate)
    assert rows[0]["accuracy_diff_ci_low"] == pytest.approx(diff.ci_low)
    assert rows[0]["accuracy_diff_ci_high"] == pytest.approx(diff.ci_high)
    bal = paired_bootstrap_difference((y, pa), (y, pb), balanced_accuracy, n_boot=300, seed=4)
    assert rows[0]["balanced_accuracy_diff"] == pytest.approx(bal.estimate)
    assert rows[0]["balanced_accuracy_diff_ci_high"] == pytest.approx(bal.ci_high)
    assert rows[0]["n_bootstrap"] == 300


def test_roc_and_calibration_rows_per_method_not_per_decision():
    methods = [_perfect("cnn", "fixed"), _perfect("cnn", "val_threshold")]
    roc = roc_rows(methods, TRUTH, IDS)
    assert {r["method"] for r in roc} == {"cnn"}
    assert [(r["fpr"], r["tpr"]) for r in roc] == [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)]
    assert math.isinf(roc[0]["threshold"]) and roc[0]["n"] == 8
    cal = calibration_rows(methods, TRUTH, IDS)
    ref = reliability_bins([TRUTH[c] for c in IDS], [methods[0].scores[c] for c in IDS])
    assert [r["count"] for r in cal] == list(ref.count) == [3, 5]
    assert [r["observed"] for r in cal] == [0.0, 1.0]


def test_size_breakdown_splits_at_the_median_wt_volume():
    volume = {c: float(i) for i, c in enumerate(IDS)}  # median 3.5
    grades = MethodGrades("cnn", "x", "fixed", dict(TRUTH) | {"t0": "LGG"})
    rows = by_size_rows([grades], TRUTH, IDS, volume)
    small, large = rows
    assert (small["size_group"], small["n"], small["correct"]) == ("small", 4, 3)
    assert (large["size_group"], large["n"], large["correct"], large["n_lgg"]) == ("large", 4, 4, 3)
    assert (small["accuracy_ci_low"], small["accuracy_ci_high"]) == wilson_interval(3, 4)
    assert small["median_wt_ml"] == 3.5 and small["wt_ml_max"] == 3.0


def test_small_test_set_banner():
    assert "3 LGG" in small_test_set_banner(TRUTH, IDS)
    big = {f"c{i}": "LGG" if i < 20 else "HGG" for i in range(40)}
    assert small_test_set_banner(big, sorted(big)) is None


def test_new_tables_round_trip(tmp_path):
    rows = classification_rows([_perfect("cnn")], TRUTH, IDS, n_bootstrap=50, seed=0)
    path = write_table(tmp_path / "classification.csv", "classification", rows)
    back = read_table(path)
    assert back[0]["decision"] == "fixed" and back[0]["mcnemar_vs_majority_test"] == "exact"
    roc = roc_rows([_perfect("cnn")], TRUTH, IDS)
    path = write_table(tmp_path / "roc.csv", "roc", roc)
    assert math.isinf(read_table(path)[0]["threshold"])
    with path.open() as handle:
        assert tuple(next(csv.reader(handle))) == TABLES["roc"]
    assert np.isfinite([r["fpr"] for r in read_table(path)]).all()
