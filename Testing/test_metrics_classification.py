"""Classification metrics against sklearn / statsmodels, invalid answers, patient bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from GliomaCompareLib.metrics.classification import (
    accuracy,
    auc_score,
    balanced_accuracy,
    classification_report,
    drop_missing_scores,
    encode_labels,
    encode_truth,
    mcnemar,
)


def random_grades(seed, n=120, p_hgg=0.75, flip=0.25):
    rng = np.random.default_rng(seed)
    y = np.where(rng.random(n) < p_hgg, "HGG", "LGG")
    pred = np.where(rng.random(n) < flip, np.where(y == "HGG", "LGG", "HGG"), y)
    scores = np.round(rng.random(n) * 0.6 + 0.4 * (y == "HGG"), 1)  # coarse: many ties
    return y.tolist(), pred.tolist(), scores.tolist()


@pytest.mark.parametrize("seed", range(5))
def test_point_estimates_match_sklearn(seed):
    from sklearn import metrics as skm

    y, pred, scores = random_grades(seed)
    r = classification_report(y, pred, scores, n_bootstrap=0)
    kw = {"pos_label": "HGG", "zero_division": 0}
    assert r.accuracy == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert r.precision == pytest.approx(skm.precision_score(y, pred, **kw), abs=1e-12)
    assert r.recall == pytest.approx(skm.recall_score(y, pred, **kw), abs=1e-12)
    assert r.sensitivity == r.recall
    assert r.specificity == pytest.approx(
        skm.recall_score(y, pred, pos_label="LGG", zero_division=0), abs=1e-12
    )
    assert r.npv == pytest.approx(
        skm.precision_score(y, pred, pos_label="LGG", zero_division=0), abs=1e-12
    )
    assert r.f1 == pytest.approx(skm.f1_score(y, pred, **kw), abs=1e-12)
    assert r.balanced_accuracy == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    y01 = [1 if v == "HGG" else 0 for v in y]
    assert r.auc == pytest.approx(skm.roc_auc_score(y01, scores), abs=1e-12)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=["LGG", "HGG"]).ravel()
    assert (r.tn, r.fp, r.fn, r.tp) == (tn, fp, fn, tp)
    np.testing.assert_array_equal(r.confusion_matrix, [[tn, fp], [fn, tp]])
    assert r.n_invalid == 0 and r.n == len(y)


def test_majority_baseline_brats_proportions():
    y = ["HGG"] * 293 + ["LGG"] * 76
    always_hgg = ["HGG"] * 369
    r = classification_report(y, always_hgg, n_bootstrap=0)
    assert r.majority_class == "HGG"
    assert r.majority_baseline_accuracy == pytest.approx(293 / 369)
    assert r.accuracy == pytest.approx(0.794, abs=1e-3)
    assert (r.recall, r.specificity) == (1.0, 0.0)
    assert math.isnan(r.npv)  # no LGG answer at all: undefined, not 0
    assert r.auc is None
    assert r.to_dict()["npv"] is None
    never_hgg = classification_report(y, ["LGG"] * 369, n_bootstrap=0)
    assert never_hgg.f1 == 0.0 and math.isnan(never_hgg.precision)


def test_invalid_answers_count_as_wrong_not_dropped():
    y = ["HGG", "HGG", "HGG", "LGG", "LGG"]
    pred = ["HGG", None, "maybe", "LGG", "unparseable"]
    r = classification_report(y, pred, n_bootstrap=0)
    assert r.n_invalid == 3
    assert (r.tp, r.fp, r.tn, r.fn) == (1, 0, 1, 0)
    assert r.accuracy == pytest.approx(2 / 5)
    assert r.recall == pytest.approx(1 / 3)
    assert r.specificity == pytest.approx(1 / 2)
    assert r.precision == 1.0  # of the answers given
    assert r.f1 == pytest.approx(2 * 1 / (2 * 1 + 0 + 2))
    # labels are case-insensitive and 1/0 work too
    r2 = classification_report([1, 1, 1, 0, 0], [" hgg", None, "x", "lgg", 7], n_bootstrap=0)
    assert (r2.accuracy, r2.n_invalid) == (r.accuracy, 3)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="label #1"):
        classification_report(["HGG", "GBM"], ["HGG", "HGG"])
    with pytest.raises(ValueError, match="items"):
        classification_report(["HGG"], ["HGG", "LGG"])
    with pytest.raises(ValueError, match="finite"):
        classification_report(["HGG", "LGG"], ["HGG", "LGG"], [0.3, float("nan")])
    with pytest.raises(ValueError, match="no items"):
        classification_report([], [])
    with pytest.raises(ValueError, match="ci"):
        classification_report(["HGG"], ["HGG"], ci=1.5)
    with pytest.raises(ValueError):
        encode_labels(["x"], allow_invalid=False)


def test_auc_rank_formula_with_ties_and_one_class():
    assert auc_score(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5
    assert auc_score(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.4, 0.1])) == pytest.approx(
        (1 + 1 + 0.5 + 1) / 4
    )
    assert auc_score(np.array([1, 1]), np.array([0.1, 0.2])) is None


def test_bootstrap_is_deterministic_and_brackets_the_estimate():
    y, pred, scores = random_grades(3, n=200)
    a = classification_report(y, pred, scores, n_bootstrap=1000, seed=4)
    b = classification_report(y, pred, scores, n_bootstrap=1000, seed=4)
    c = classification_report(y, pred, scores, n_bootstrap=1000, seed=5)
    assert a.ci == b.ci and a.ci != c.ci
    for name in ("accuracy", "precision", "npv", "recall", "specificity", "f1", "auc"):
        lo, hi = a.ci[name]
        value = a.auc if name == "auc" else getattr(a, name)
        assert lo <= value <= hi, name
    # a binomial proportion: the interval width is close to 2 * 1.96 * sqrt(p (1 - p) / n)
    lo, hi = a.ci["accuracy"]
    expected = 2 * 1.96 * math.sqrt(a.accuracy * (1 - a.accuracy) / 200)
    assert hi - lo == pytest.approx(expected, rel=0.2)
    assert classification_report(y, pred, n_bootstrap=0).ci == {}
    assert "auc" not in classification_report(y, pred, n_bootstrap=50).ci


def test_bootstrap_resamples_patients_not_items():
    y, pred, _ = random_grades(8, n=60)
    per_patient = classification_report(y, pred, n_bootstrap=400, seed=1)
    # each patient now has 5 identical slices: same point estimate, same patient-level CI
    k = 5
    y5 = [v for v in y for _ in range(k)]
    p5 = [v for v in pred for _ in range(k)]
    ids = [f"P{i:03d}" for i in range(len(y)) for _ in range(k)]
    grouped = classification_report(y5, p5, groups=ids, n_bootstrap=400, seed=1)
    assert grouped.n_groups == 60 and grouped.n == 300
    assert grouped.accuracy == pytest.approx(per_patient.accuracy)
    for name, (lo, hi) in per_patient.ci.items():
        assert grouped.ci[name] == pytest.approx((lo, hi), abs=1e-12), name
    # resampling the 300 slices as if independent gives a falsely narrow interval
    naive = classification_report(y5, p5, n_bootstrap=400, seed=1)
    width = lambda r: r.ci["accuracy"][1] - r.ci["accuracy"][0]  # noqa: E731
    assert width(naive) < 0.7 * width(grouped)


def test_summary_text_mentions_the_numbers():
    y, pred, scores = random_grades(1)
    r = classification_report(y, pred, scores, n_bootstrap=100)
    text = r.summary()
    assert f"accuracy {r.accuracy:.3f}" in text and "95% CI" in text
    assert "majority-class baseline" in text and "auc" in text
    d = r.to_dict()
    assert d["ci"]["accuracy"][0] <= d["accuracy"] <= d["ci"]["accuracy"][1]


@pytest.mark.parametrize("seed", range(4))
def test_mcnemar_matches_statsmodels(seed):
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    rng = np.random.default_rng(seed)
    n = [30, 80, 200, 369][seed]
    y = np.where(rng.random(n) < 0.8, "HGG", "LGG")
    a = np.where(rng.random(n) < 0.2, np.where(y == "HGG", "LGG", "HGG"), y)
    b = np.where(rng.random(n) < 0.3, np.where(y == "HGG", "LGG", "HGG"), y)
    res = mcnemar(y.tolist(), a.tolist(), b.tolist())
    a_ok, b_ok = a == y, b == y
    table = [
        [np.sum(a_ok & b_ok), np.sum(a_ok & ~b_ok)],
        [np.sum(~a_ok & b_ok), np.sum(~a_ok & ~b_ok)],
    ]
    exact = res.b + res.c < 25
    ref = sm_mcnemar(table, exact=exact, correction=True)
    assert res.method == ("exact" if exact else "chi2_cc")
    assert res.statistic == pytest.approx(ref.statistic, abs=1e-9)
    assert res.p_value == pytest.approx(ref.pvalue, abs=1e-9)
    assert res.both_correct + res.b + res.c + res.both_wrong == n
    assert res.accuracy_a == pytest.approx(a_ok.mean())


def test_mcnemar_edge_cases():
    y = ["HGG", "LGG", "HGG"]
    same = mcnemar(y, y, y)
    assert (same.b, same.c, same.p_value, same.method) == (0, 0, 1.0, "exact")
    r = mcnemar(y, y, [None, "LGG", "HGG"])  # an invalid answer is wrong
    assert (r.b, r.c) == (1, 0)
    with pytest.raises(ValueError, match="lengths"):
        mcnemar(y, y, y[:2])
    # both chi-square branches are reachable: 30 discordant patients all one way
    big_y = ["HGG"] * 40
    r = mcnemar(big_y, big_y, ["LGG"] * 30 + ["HGG"] * 10)
    assert r.method == "chi2_cc" and r.statistic == pytest.approx(29**2 / 30)
    assert r.p_value < 1e-6


@pytest.mark.parametrize("seed", range(3))
def test_accuracy_functions_match_the_report_and_sklearn(seed):
    from sklearn import metrics as skm

    y, pred, _ = random_grades(seed, n=60)
    pred = [None if i % 11 == 0 else v for i, v in enumerate(pred)]  # some invalid answers
    r = classification_report(y, pred, n_bootstrap=0)
    assert accuracy(y, pred) == pytest.approx(r.accuracy, abs=1e-12)
    assert balanced_accuracy(y, pred) == pytest.approx(r.balanced_accuracy, abs=1e-12)
    valid = [p if p is not None else "invalid" for p in pred]
    assert accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, valid), abs=1e-12)
    # encoded integer arrays (the fast path) give the same numbers as the labels
    t = encode_labels(y, allow_invalid=False)
    p = encode_labels(pred, allow_invalid=True)
    assert balanced_accuracy(t, p) == pytest.approx(r.balanced_accuracy, abs=1e-12)
    assert math.isnan(balanced_accuracy(["HGG", "HGG"], ["HGG", "LGG"]))
    assert math.isnan(accuracy([], []))
    with pytest.raises(ValueError, match="items"):
        accuracy(["HGG"], ["HGG", "LGG"])


def test_vectorised_encoding_equals_the_item_loop():
    values = np.array([1, 0, 2, -1, 1, 0, 7], dtype=np.int64)
    np.testing.assert_array_equal(
        encode_labels(values, allow_invalid=True),
        encode_labels(values.tolist(), allow_invalid=True),
    )
    np.testing.assert_array_equal(
        encode_labels(np.array([True, False]), allow_invalid=False), [1, 0]
    )
    with pytest.raises(ValueError, match="label #2"):
        encode_labels(values, allow_invalid=False)


def test_encode_truth_accepts_float_targets_only_when_exact():
    np.testing.assert_array_equal(encode_truth(np.array([1.0, 0.0, 1.0])), [1, 0, 1])
    np.testing.assert_array_equal(encode_truth([1.0, "lgg", 0, True]), [1, 0, 0, 1])
    with pytest.raises(ValueError, match="label #1"):
        encode_truth(np.array([1.0, 0.5]))
    with pytest.raises(ValueError, match="label #0"):
        encode_truth([float("nan")])


def test_drop_missing_scores_keeps_scored_patients_and_counts_the_rest():
    t, s, n_missing = drop_missing_scores(
        ["HGG", "LGG", "HGG", "LGG"], [0.9, None, float("nan"), 0.2]
    )
    np.testing.assert_array_equal(t, [1, 0])
    np.testing.assert_allclose(s, [0.9, 0.2], atol=0)
    assert n_missing == 2
    with pytest.raises(ValueError, match="finite"):
        drop_missing_scores([1, 0], [0.1, float("inf")])
    with pytest.raises(ValueError, match="items"):
        drop_missing_scores([1, 0], [0.1])
