"""Statistics of the comparison (issue 13) against statsmodels / scipy / sklearn and hand-made
cases: intervals, McNemar against the majority baseline, the paired patient bootstrap, Wilcoxon,
AUC / ROC with missing scores, calibration, the Youden threshold, vote shares, the collapse test
for predicted centres and the small-test-set warning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from GliomaCompareLib.metrics import (
    accuracy,
    auc_with_count,
    balanced_accuracy,
    brier_score,
    centre_collapse,
    choose_threshold_youden,
    clopper_pearson_interval,
    mcnemar,
    mcnemar_vs_majority,
    paired_bootstrap_difference,
    reliability_bins,
    roc_curve_points,
    small_test_set_warning,
    vote_share,
    wilcoxon_paired,
    wilson_interval,
)

KN = [(0, 1), (1, 1), (0, 3), (3, 3), (1, 3), (2, 11), (6, 11), (0, 76), (76, 76), (60, 76)]
KN += [(k, 20) for k in range(21)] + [(233, 293), (1, 369)]


# ----------------------------------------------------------------------------------------------
# intervals


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_and_clopper_pearson_match_statsmodels(confidence):
    from statsmodels.stats.proportion import proportion_confint

    alpha = 1 - confidence
    for k, n in KN:
        ref = proportion_confint(k, n, alpha=alpha, method="wilson")
        np.testing.assert_allclose(wilson_interval(k, n, confidence), ref, atol=1e-12)
        ref = proportion_confint(k, n, alpha=alpha, method="beta")
        np.testing.assert_allclose(clopper_pearson_interval(k, n, confidence), ref, atol=1e-10)


def test_intervals_behave_at_the_edges():
    # 3 / 3: not "1.000 [1.000, 1.000]" as a percentile bootstrap gives
    low, high = wilson_interval(3, 3)
    assert high == 1.0 and low == pytest.approx(0.4385, abs=1e-4)
    low, high = wilson_interval(0, 3)
    assert low == 0.0 and high == pytest.approx(0.5615, abs=1e-4)
    assert clopper_pearson_interval(0, 1) == (0.0, pytest.approx(0.975, abs=1e-12))
    assert clopper_pearson_interval(1, 1) == (pytest.approx(0.025, abs=1e-12), 1.0)
    for interval in (wilson_interval, clopper_pearson_interval):
        assert all(math.isnan(v) for v in interval(0, 0))
        for k, n in KN:
            low, high = interval(k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0, (k, n)
    # Clopper-Pearson is the wider (conservative) one away from the edges
    assert np.subtract(*clopper_pearson_interval(6, 11)[::-1]) > np.subtract(
        *wilson_interval(6, 11)[::-1]
    )


@pytest.mark.parametrize(
    ("k", "n", "confidence", "match"),
    [
        (4, 3, 0.95, "successes"),
        (-1, 3, 0.95, "successes"),
        (1.5, 3, 0.95, "whole"),
        (1, 3, 1.0, "confidence"),
        (1, 3, 0.0, "confidence"),
    ],
)
def test_intervals_refuse_bad_input(k, n, confidence, match):
    for interval in (wilson_interval, clopper_pearson_interval):
        with pytest.raises(ValueError, match=match):
            interval(k, n, confidence)


# ----------------------------------------------------------------------------------------------
# McNemar against the majority baseline


def _against_majority(b: int, c: int, n_hgg_right: int = 30):
    """Truth and predictions with ``b`` LGG patients called LGG (the method right, the
    always-HGG baseline wrong) and ``c`` HGG patients called LGG (the reverse)."""
    y = ["LGG"] * b + ["HGG"] * c + ["HGG"] * n_hgg_right + ["LGG"] * 3
    pred = ["LGG"] * b + ["LGG"] * c + ["HGG"] * n_hgg_right + ["HGG"] * 3
    return y, pred


@pytest.mark.parametrize(
    ("b", "c", "method"),
    [(14, 10, "exact"), (15, 10, "chi2_cc"), (24, 0, "exact"), (0, 25, "chi2_cc")],
)
def test_mcnemar_vs_majority_switches_test_at_25_discordant(b, c, method):
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    y, pred = _against_majority(b, c)
    res = mcnemar_vs_majority(y, pred, "HGG")
    assert (res.b, res.c, res.method) == (b, c, method)  # b + c = 24 exact, 25 chi-square
    both_correct, both_wrong = 30, 3
    table = [[both_correct, b], [c, both_wrong]]
    ref = sm_mcnemar(table, exact=method == "exact", correction=True)
    assert res.statistic == pytest.approx(ref.statistic, abs=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, abs=1e-12)
    assert res.accuracy_b == pytest.approx((c + 30) / len(y), abs=1e-12)  # the baseline
    assert res == mcnemar(y, pred, ["HGG"] * len(y))


def test_mcnemar_vs_majority_label_is_checked_and_case_insensitive():
    y, pred = _against_majority(3, 1)
    assert mcnemar_vs_majority(y, pred, " hgg") == mcnemar_vs_majority(y, pred, "HGG")
    lgg = mcnemar_vs_majority(y, pred, "LGG")  # a baseline answering LGG: right on LGG only
    assert lgg.accuracy_b == pytest.approx(6 / len(y), abs=1e-12)
    with pytest.raises(ValueError, match="majority_label"):
        mcnemar_vs_majority(y, pred, "GBM")


# ----------------------------------------------------------------------------------------------
# paired patient bootstrap


def _reference_bootstrap(a, b, statistic, n_boot, seed, confidence):
    """The documented scheme written out: the same patient indices for both methods."""
    rng = np.random.default_rng(seed)
    n = len(a)
    diffs = []
    for idx in rng.integers(0, n, size=(n_boot, n)):
        diffs.append(statistic(a[idx]) - statistic(b[idx]))
    alpha = (1 - confidence) / 2
    return np.quantile(diffs, [alpha, 1 - alpha])


def test_paired_bootstrap_of_mean_dice_matches_the_reference_scheme():
    rng = np.random.default_rng(0)
    dice_a = rng.uniform(0.3, 0.9, 40)
    dice_b = np.clip(dice_a - rng.normal(0.1, 0.1, 40), 0, 1)
    res = paired_bootstrap_difference(dice_a, dice_b, np.mean, n_boot=500, seed=3)
    assert res.estimate == pytest.approx(dice_a.mean() - dice_b.mean(), abs=1e-12)
    assert (res.estimate_a, res.n, res.n_boot, res.n_undefined) == (
        pytest.approx(dice_a.mean(), abs=1e-12),
        40,
        500,
        0,
    )
    ref = _reference_bootstrap(dice_a, dice_b, np.mean, 500, 3, 0.95)
    np.testing.assert_allclose((res.ci_low, res.ci_high), ref, atol=1e-12)
    assert res.ci_low <= res.estimate <= res.ci_high
    assert res == paired_bootstrap_difference(dice_a, dice_b, np.mean, n_boot=500, seed=3)
    other = paired_bootstrap_difference(dice_a, dice_b, np.mean, n_boot=500, seed=4)
    assert (other.ci_low, other.ci_high) != (res.ci_low, res.ci_high)
    assert res.to_dict()["ci_low"] == res.ci_low


def test_paired_bootstrap_resamples_patients_jointly():
    # B is A minus 0.1 on every patient: resampled jointly the difference never varies;
    # resampled independently it would spread over about +-0.1
    dice_a = np.linspace(0.0, 0.9, 30)
    res = paired_bootstrap_difference(dice_a, dice_a - 0.1, np.mean, n_boot=300, seed=0)
    assert res.ci_low == pytest.approx(0.1, abs=1e-12)
    assert res.ci_high == pytest.approx(0.1, abs=1e-12)


def test_paired_bootstrap_of_accuracy_with_label_columns():
    y = ["HGG"] * 30 + ["LGG"] * 10
    pred_a = ["HGG"] * 27 + ["LGG"] * 3 + ["LGG"] * 7 + ["HGG"] * 3
    always_hgg = ["HGG"] * 40
    res = paired_bootstrap_difference((y, pred_a), (y, always_hgg), accuracy, n_boot=400)
    assert res.estimate == pytest.approx(34 / 40 - 30 / 40, abs=1e-12)
    assert res.n_undefined == 0 and res.ci_low <= res.estimate <= res.ci_high
    # accuracy is the mean correctness: the same draws on 0/1 columns give the same interval
    ok_a = (np.array(pred_a) == np.array(y)).astype(float)
    ok_b = (np.array(always_hgg) == np.array(y)).astype(float)
    ref = paired_bootstrap_difference(ok_a, ok_b, np.mean, n_boot=400)
    np.testing.assert_allclose((res.ci_low, res.ci_high), (ref.ci_low, ref.ci_high), atol=1e-12)
    assert res.ci_high - res.ci_low > 0.1


def test_paired_bootstrap_skips_and_counts_undefined_resamples():
    # one LGG patient among 10: a resample without it has no balanced accuracy, which happens
    # with probability 0.9 ** 10 = 0.349
    y = ["LGG"] + ["HGG"] * 9
    pred_a = ["LGG"] + ["HGG"] * 8 + ["LGG"]
    pred_b = ["HGG"] * 10
    n_boot = 2000
    res = paired_bootstrap_difference(
        (y, pred_a), (y, pred_b), balanced_accuracy, n_boot=n_boot, seed=1
    )
    p = 0.9**10
    assert abs(res.n_undefined - n_boot * p) < 5 * math.sqrt(n_boot * p * (1 - p))
    assert res.n_used == n_boot - res.n_undefined
    # in a defined resample A's specificity is 1 and B's balanced accuracy 0.5, so the
    # difference is A's sensitivity / 2, within [0, 0.5]
    assert res.estimate == pytest.approx((8 / 9 + 1) / 2 - 0.5, abs=1e-12)
    assert 0.0 <= res.ci_low < res.estimate < res.ci_high <= 0.5 + 1e-12
    # a statistic that is never defined gives a nan interval, not an exception
    never = paired_bootstrap_difference([1.0, 2.0], [1.0, 2.0], lambda v: None, n_boot=10)
    assert never.n_undefined == 10 and math.isnan(never.ci_low) and math.isnan(never.estimate)
    assert never.to_dict()["ci_low"] is None


def test_paired_bootstrap_refuses_bad_input():
    with pytest.raises(ValueError, match="patients"):
        paired_bootstrap_difference([0.1, 0.2], [0.1], np.mean)
    with pytest.raises(ValueError, match="no patients"):
        paired_bootstrap_difference([], [], np.mean)
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap_difference([0.1], [0.1], np.mean, n_boot=0)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_difference([0.1], [0.1], np.mean, confidence=95)
    with pytest.raises(ValueError, match="column"):
        paired_bootstrap_difference(([1, 0], [1]), ([1, 0], [1, 0]), accuracy)


# ----------------------------------------------------------------------------------------------
# Wilcoxon


@pytest.mark.parametrize("seed", range(4))
def test_wilcoxon_matches_scipy(seed):
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(seed)
    n = [8, 15, 40, 120][seed]
    a = np.round(rng.uniform(0, 1, n), 2)  # rounded: ties and some zero differences
    b = np.round(np.clip(a - rng.normal(0.05, 0.1, n), 0, 1), 2)
    b[: n // 5] = a[: n // 5]
    res = wilcoxon_paired(a, b)
    ref = wilcoxon(a, b, zero_method="wilcox")
    assert res.statistic == pytest.approx(ref.statistic, abs=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, abs=1e-12)
    assert res.n == int(np.count_nonzero(a != b)) and res.n_zero == n - res.n
    assert res.median_difference == pytest.approx(float(np.median(a - b)), abs=1e-12)
    assert res.note == ""


def test_wilcoxon_without_differences_is_p_one_with_a_note():
    res = wilcoxon_paired([0.5, 0.0, 0.7], [0.5, 0.0, 0.7])
    assert (res.p_value, res.n, res.n_zero) == (1.0, 0, 3)
    assert math.isnan(res.statistic) and "zero" in res.note
    assert res.to_dict()["statistic"] is None
    empty = wilcoxon_paired([], [])
    assert math.isnan(empty.p_value) and empty.n == 0 and empty.note == "no pairs"
    with pytest.raises(ValueError, match="pair #1"):
        wilcoxon_paired([0.1, float("nan")], [0.1, 0.2])
    with pytest.raises(ValueError, match="values"):
        wilcoxon_paired([0.1, 0.2], [0.1])


# ----------------------------------------------------------------------------------------------
# AUC and ROC on the patients with a score


def _scored(seed: int, n: int = 60):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.7).astype(int)
    scores = np.round(rng.random(n) * 0.6 + 0.4 * y, 1)  # coarse: many ties
    return y, scores


@pytest.mark.parametrize("seed", range(4))
def test_auc_and_roc_match_sklearn_on_the_scored_patients(seed):
    from sklearn.metrics import roc_auc_score, roc_curve

    y, scores = _scored(seed)
    with_gaps = [None if i % 7 == 0 else float(s) for i, s in enumerate(scores)]
    with_gaps[1] = float("nan")
    keep = np.array([v is not None and not math.isnan(v) for v in with_gaps])
    auc, n_used, n_missing = auc_with_count(y, with_gaps)
    assert (n_used, n_missing) == (int(keep.sum()), int((~keep).sum()))
    assert auc == pytest.approx(roc_auc_score(y[keep], scores[keep]), abs=1e-12)
    fpr, tpr, thresholds = roc_curve_points(y, with_gaps)
    ref_fpr, ref_tpr, ref_thr = roc_curve(y[keep], scores[keep], drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, ref_tpr, atol=1e-12)
    np.testing.assert_array_equal(thresholds[1:], ref_thr[1:])  # sklearn's first is inf too
    assert thresholds[0] == np.inf
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc, abs=1e-12)


def test_roc_ties_make_one_step_and_one_class_is_nan():
    fpr, tpr, thr = roc_curve_points(["HGG", "LGG", "HGG", "LGG"], [0.9, 0.9, 0.5, 0.1])
    np.testing.assert_allclose(fpr, [0, 0.5, 0.5, 1], atol=0)
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1], atol=0)  # the tie at 0.9: one diagonal step
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.5, 0.1], atol=0)
    assert auc_with_count(["HGG", "LGG"], [0.5, 0.5]).auc == 0.5
    one_class = auc_with_count(["HGG", "HGG", "LGG"], [0.1, 0.7, None])
    assert math.isnan(one_class.auc) and (one_class.n_used, one_class.n_missing) == (2, 1)
    fpr, tpr, _ = roc_curve_points([1, 1], [0.2, 0.4])
    assert np.isnan(fpr).all() and np.testing.assert_allclose(tpr, [0, 0.5, 1], atol=0) is None
    fpr, tpr, thr = roc_curve_points([1, 0], [None, None])
    assert np.isnan(fpr).all() and np.isnan(tpr).all() and thr.tolist() == [np.inf]


# ----------------------------------------------------------------------------------------------
# calibration


@pytest.mark.parametrize("seed", range(3))
def test_reliability_bins_and_brier_match_sklearn(seed):
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(seed)
    prob = rng.random(80) ** 2
    prob[:6] = [0.0, 0.1, 0.2, 0.5, 0.9, 1.0]  # values on bin edges
    y = (rng.random(80) < prob).astype(int)
    bins = reliability_bins(y, prob, n_bins=10)
    ref_true, ref_pred = calibration_curve(y, prob, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(bins.observed, ref_true, atol=1e-12)
    np.testing.assert_allclose(bins.mean_predicted, ref_pred, atol=1e-12)
    assert bins.count.sum() == 80 and (bins.count > 0).all()
    assert ((bins.bin_low <= bins.mean_predicted) & (bins.mean_predicted <= bins.bin_high)).all()
    assert brier_score(y, prob) == pytest.approx(brier_score_loss(y, prob), abs=1e-12)


def test_reliability_bins_by_hand():
    y = ["HGG", "LGG", "HGG", "HGG", "LGG"]
    bins = reliability_bins(y, [0.05, 0.1, 0.95, 0.7, 0.75], n_bins=4)
    # edges 0, .25, .5, .75, 1; right-closed bins, the empty (.25, .5] omitted
    assert bins.rows() == [
        {"bin_low": 0.0, "bin_high": 0.25, "mean_predicted": pytest.approx(0.075),
         "observed": 0.5, "count": 2},
        {"bin_low": 0.5, "bin_high": 0.75, "mean_predicted": pytest.approx(0.725),
         "observed": 0.5, "count": 2},
        {"bin_low": 0.75, "bin_high": 1.0, "mean_predicted": pytest.approx(0.95),
         "observed": 1.0, "count": 1},
    ]  # fmt: skip
    assert brier_score(["HGG", "LGG"], [0.8, 0.3]) == pytest.approx((0.04 + 0.09) / 2, abs=1e-15)
    assert brier_score([1, 0], [0.5, 0.5]) == pytest.approx(0.25, abs=1e-15)
    with pytest.raises(ValueError, match="probability #1"):
        brier_score([1, 0], [0.5, None])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reliability_bins([1, 0], [0.5, 1.2])
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins([1], [0.5], n_bins=0)


# ----------------------------------------------------------------------------------------------
# the Youden threshold and vote shares


def _youden_by_loop(y, s):
    """The rule as the docstring states it, one candidate at a time."""
    y = np.asarray(y) == 1
    s = np.asarray(s, dtype=float)
    u = np.unique(s)
    candidates = [u[0], *((u[:-1] + u[1:]) / 2), np.nextafter(u[-1], np.inf)]
    best = None
    for t in candidates:
        pred = s >= t
        j = round(float((pred & y).sum() / y.sum()) + float((~pred & ~y).sum() / (~y).sum()), 12)
        key = (j, -abs(t - 0.5))
        if best is None or key > best[0]:
            best = (key, float(t))
    return best[1]


@pytest.mark.parametrize("seed", range(6))
def test_youden_threshold_matches_the_stated_rule(seed):
    y, scores = _scored(seed, n=[5, 12, 30, 74, 74, 200][seed])
    if y.all() or not y.any():
        y[0] = 1 - y[0]
    chosen = choose_threshold_youden(y, scores)
    assert chosen.threshold == _youden_by_loop(y, scores)
    pred = scores >= chosen.threshold
    assert chosen.sensitivity == pytest.approx(pred[y == 1].mean(), abs=1e-12)
    assert chosen.specificity == pytest.approx((~pred[y == 0]).mean(), abs=1e-12)
    assert chosen.youden_j == pytest.approx(chosen.sensitivity + chosen.specificity - 1, abs=1e-12)
    assert chosen.balanced_accuracy == pytest.approx((chosen.youden_j + 1) / 2, abs=1e-12)


def test_youden_threshold_hand_cases_and_tie_break():
    # the CNN's former cases, unchanged
    chosen = choose_threshold_youden([0, 0, 1, 1, 1], [0.1, 0.4, 0.35, 0.8, 0.9])
    assert chosen.threshold == pytest.approx(0.6, abs=1e-12)
    assert (chosen.sensitivity, chosen.specificity) == (pytest.approx(2 / 3), 1.0)
    d = chosen.to_dict()
    assert {"threshold", "balanced_accuracy", "sensitivity", "specificity", "note"} <= set(d)
    assert choose_threshold_youden([0, 1], [0.2, 0.3]).threshold == pytest.approx(0.25)
    # equal J at 0.09375 and 0.75: the one nearer 0.5 wins
    near = choose_threshold_youden([0, 1, 0, 1], [0.0625, 0.125, 0.625, 0.875])
    assert near.threshold == 0.75 and near.youden_j == pytest.approx(0.5)
    # equal J at 0.25 and 0.75, equally near 0.5: the lower wins
    low = choose_threshold_youden(["LGG", "HGG", "LGG", "HGG"], [0.125, 0.375, 0.625, 0.875])
    assert low.threshold == 0.25


def test_youden_threshold_missing_scores_and_one_class():
    chosen = choose_threshold_youden([1.0, 0.0, 1.0, 0.0], [0.9, 0.1, None, float("nan")])
    assert (chosen.n_used, chosen.n_missing) == (2, 2)
    assert chosen.threshold == pytest.approx(0.5) and chosen.youden_j == 1.0
    one = choose_threshold_youden(["HGG", "HGG"], [0.2, 0.9])
    assert one.threshold == 0.5 and "one grade" in one.note and math.isnan(one.youden_j)
    assert one.to_dict()["sensitivity"] is None
    none = choose_threshold_youden(["HGG", "LGG"], [None, None])
    assert none.threshold == 0.5 and "no validation case is scored" in none.note


def test_vote_share():
    assert vote_share(["HGG", "HGG", "LGG", None, "unsure"]) == (pytest.approx(2 / 3), 3, False)
    assert vote_share(["HGG", " lgg ", "HGG", "LGG"]) == (0.5, 4, True)
    share, n_votes, tie = vote_share([None, "?"])
    assert math.isnan(share) and (n_votes, tie) == (0, False)
    assert vote_share(["LGG"] * 10).share_hgg == 0.0


# ----------------------------------------------------------------------------------------------
# the collapse test for predicted centres


def _true_centres(n=60, seed=0):
    return np.random.default_rng(seed).uniform(40, 200, size=(n, 2))


def test_centres_collapsing_onto_two_far_apart_locations_are_collapsed():
    truth = _true_centres()
    # two fixed places far apart: the spread is not small, the concentration is
    pred = np.where(np.arange(60)[:, None] % 2 == 0, [[50.0, 50.0]], [[190.0, 190.0]])
    res = centre_collapse(pred, truth)
    assert res.spread_ratio > 0.25 and res.n_locations == 2 and res.top2_share == 1.0
    assert res.verdict == "collapsed" and res.collapsed and "locations" in res.reason
    # two nearby places near the image centre: the spread criterion already fires
    near = np.where(np.arange(60)[:, None] % 3 == 0, [[120.0, 120.0]], [[124.0, 118.0]])
    res = centre_collapse(near, truth)
    assert res.spread_ratio < 0.25 and res.verdict == "collapsed" and "spread" in res.reason


def test_centres_equal_to_the_truth_are_not_collapsed():
    truth = _true_centres()
    res = centre_collapse(truth, truth)
    assert res.verdict == "not collapsed" and not res.collapsed
    assert res.spread_ratio == pytest.approx(1.0, abs=1e-12)
    assert res.top2_share < 0.1 and res.n_locations > 50
    noisy = truth + np.random.default_rng(1).normal(0, 10, truth.shape)
    assert centre_collapse(noisy, truth).verdict == "not collapsed"
    # truth that itself sits on two places, predicted perfectly: concentrated like the truth
    two_place_truth = np.repeat([[60.0, 80.0], [180.0, 150.0]], 30, axis=0)
    assert centre_collapse(two_place_truth, two_place_truth).verdict == "not collapsed"


def test_centre_collapse_spread_by_hand_and_edge_cases():
    truth = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    pred = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [np.nan, 1.0]])
    res = centre_collapse(pred, truth, min_points=3)
    assert (res.n, res.n_missing) == (3, 1)
    # the three kept true centres around their centroid (2/3, 2/3)
    assert res.true_spread == pytest.approx((math.sqrt(8) + 2 * math.sqrt(20)) / 9, abs=1e-12)
    assert res.pred_spread == 0.0 and res.spread_ratio == 0.0 and res.verdict == "collapsed"
    few = centre_collapse(pred[:2], truth[:2])
    assert few.verdict == "undetermined" and "2 usable" in few.reason
    still = centre_collapse(_true_centres(5), np.ones((5, 2)))
    assert still.verdict == "undetermined" and "do not vary" in still.reason
    assert centre_collapse([], []).verdict == "undetermined"
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        centre_collapse(np.zeros((4, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="centres"):
        centre_collapse(np.zeros((4, 2)), np.zeros((3, 2)))


# ----------------------------------------------------------------------------------------------
# the small-test-set warning


def test_small_test_set_warning():
    assert small_test_set_warning(20, 60) is None
    assert small_test_set_warning(76, 293) is None
    text = small_test_set_warning(11, 63)
    assert text is not None and "11 LGG" in text and "specificity" in text
    assert "5/11" in text and "0.21-0.72" in text  # the Wilson interval of 5 / 11
    assert "HGG patients (fewer" not in text
    both = small_test_set_warning(3, 5, min_lgg=10)
    assert "3 LGG" in both and "5 HGG" in both and "sensitivity" in both
    assert "undefined" in small_test_set_warning(0, 40)
    assert small_test_set_warning(19, 60) is not None
    with pytest.raises(ValueError, match="counts"):
        small_test_set_warning(-1, 3)
