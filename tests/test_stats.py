"""repspec_zoo.evaluation.stats: CI coverage, inf handling, paired comparison, robust accuracy, input errors."""
import json
import math

import numpy as np
import pytest
import scipy.stats
import torch

from repspec_zoo.evaluation import stats

B = 999  # bootstrap resamples: enough for 95 % CIs in tests, cheap on 2 cores


def _rng(seed):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------- coverage

def test_mean_ci_covers_true_mean_at_nominal_rate():
    """Exponential(scale 1), n = 100: the 95 % BCa CI covers the true mean 1.0 in 88-99 % of 200 reps."""
    hits = [stats.distance_summary(_rng(rep).exponential(1.0, 100), n_resamples=B, seed=rep)["l2_mean"]
            for rep in range(200)]
    coverage = np.mean([iv.low <= 1.0 <= iv.high for iv in hits])
    assert 0.88 <= coverage <= 0.99, coverage


def test_median_ci_coverage_with_unbroken_samples():
    """Exponential(1) distances with every value above 2 replaced by inf (13.5 % 'never broken'):
    the median over all samples is still ln 2, and its 95 % CI covers it in 88-99 % of 200 reps."""
    covered, saw_inf = [], False
    for rep in range(200):
        x = _rng(1000 + rep).exponential(1.0, 100)
        x[x > 2.0] = np.inf
        saw_inf |= bool(np.isinf(x).any())
        iv = stats.distance_summary(x, n_resamples=B, seed=rep)["l2_median"]
        covered.append(iv.low <= math.log(2) <= iv.high)
    assert saw_inf
    assert 0.88 <= np.mean(covered) <= 0.99, np.mean(covered)


# ------------------------------------------------------------------------------- inf handling

def test_inf_counts_in_median_quantiles_and_success_rate():
    x = np.r_[_rng(0).exponential(1.0, 40), np.full(60, np.inf)]  # 60 % never broken
    s = stats.distance_summary(x, n_resamples=B)
    assert s["n_samples"] == 100 and s["n_success"] == 40
    assert s["l2_median"].estimate == np.inf and s["l2_median"].high == np.inf
    assert s["l2_quantiles"]["q75"] == np.inf and s["l2_quantiles"]["q90"] == np.inf
    stand_in = np.where(np.isinf(x), 1e9, x)  # q10, q25 fall between finite order statistics
    assert s["l2_quantiles"]["q10"] == pytest.approx(np.quantile(stand_in, 0.10))
    assert s["l2_quantiles"]["q25"] == pytest.approx(np.quantile(stand_in, 0.25))
    ci = scipy.stats.binomtest(40, 100).proportion_ci(0.95, method="exact")
    assert s["success_rate"].estimate == pytest.approx(0.4)
    assert (s["success_rate"].low, s["success_rate"].high) == pytest.approx((ci.low, ci.high))
    assert s["l2_mean"].estimate == pytest.approx(x[:40].mean())  # mean over the broken samples only


def test_median_below_half_inf_is_finite_and_matches_numpy():
    x = np.r_[_rng(1).exponential(1.0, 61), np.full(39, np.inf)]
    s = stats.distance_summary(x, n_resamples=B)
    big = np.where(np.isinf(x), 1e9, x)  # same order statistics up to the 50th/51st value
    assert s["l2_median"].estimate == pytest.approx(np.median(big))
    assert np.isfinite(s["l2_median"].low)


def test_all_equal_falls_back_to_percentile_and_json_is_strict():
    s = stats.distance_summary([0.75] * 20 + [math.inf] * 5, n_resamples=B)  # 0.75: exact mean, BCa degenerates
    assert s["l2_mean"].method == "bootstrap-percentile"
    assert (s["l2_mean"].low, s["l2_mean"].high) == (0.75, 0.75)
    data = json.loads(json.dumps(stats.to_jsonable(s), allow_nan=False))
    assert data["l2_quantiles"]["q90"] == "inf" and data["success_rate"]["method"] == "clopper-pearson"


def test_to_jsonable_writes_strict_json_and_from_jsonable_reads_the_numbers_back():
    value = {"d": [1.5, math.inf, -math.inf, math.nan, np.float32(0.25), np.int64(3), True], 1000: (2, "inf"),
             "ci": stats.Interval(0.5, 0.25, math.inf, 0.95, "bootstrap-bca")}
    text = json.dumps(stats.to_jsonable(value), allow_nan=False)
    assert json.loads(text) == {"d": [1.5, "inf", "-inf", None, 0.25, 3, True], "1000": [2, "inf"],
                                "ci": {"estimate": 0.5, "low": 0.25, "high": "inf", "confidence": 0.95,
                                       "method": "bootstrap-bca"}}
    back = stats.from_jsonable(json.loads(text))
    assert back["d"] == [1.5, math.inf, -math.inf, None, 0.25, 3, True] and back["ci"]["high"] == math.inf
    assert back["1000"] == [2, math.inf]  # a string "inf" cannot be told from the number: read back as one


def test_all_inf_has_no_mean_and_torch_input_is_accepted():
    s = stats.distance_summary(torch.full((10,), float("inf")), n_resamples=B)
    assert s["n_success"] == 0 and s["l2_mean"] is None and s["l2_median"].estimate == np.inf
    assert s["success_rate"].high == pytest.approx(scipy.stats.binomtest(0, 10).proportion_ci().high)


def test_seed_makes_bootstrap_deterministic():
    x = _rng(5).lognormal(0, 0.5, 50)
    assert stats.distance_summary(x, n_resamples=B, seed=3) == stats.distance_summary(x, n_resamples=B, seed=3)


# ------------------------------------------------------------------------------- paired

def _pair(seed, n=200, shift=0.0):
    r = _rng(seed)
    base = r.lognormal(0.0, 0.5, n)  # per-image difficulty, shared by both models
    return base + r.normal(0, 0.05, n), base + shift + r.normal(0, 0.05, n)


def test_known_shift_is_beyond_noise_and_ci_contains_it():
    a, b = _pair(0, shift=0.1)
    r = stats.paired_comparison(a, b, n_resamples=B)
    assert r["beyond_noise"] and r["direction"] == "b > a" and r["verdict"].startswith("b > a beyond noise")
    assert r["mean_difference"].low <= 0.1 <= r["mean_difference"].high
    rel = r["relative_difference"]
    assert rel.estimate == pytest.approx(b.mean() / a.mean() - 1) and rel.low > 0
    assert r["wilcoxon"]["p_value"] < 0.05 and r["wilcoxon"]["n_used"] == 200


def test_null_is_rarely_flagged():
    """Exchangeable a, b (same per-image base, independent equal noise): flagged in <= 10 % of 100 reps."""
    flagged = [stats.paired_comparison(*_pair(100 + rep), n_resamples=B, seed=rep)["beyond_noise"]
               for rep in range(100)]
    assert np.mean(flagged) <= 0.10, np.mean(flagged)


def test_swapping_a_and_b_flips_the_sign():
    a, b = _pair(7, shift=0.03)
    ab, ba = stats.paired_comparison(a, b, n_resamples=B), stats.paired_comparison(b, a, n_resamples=B)
    assert ab["mean_difference"].estimate == pytest.approx(-ba["mean_difference"].estimate)
    assert ab["mean_difference"].low == pytest.approx(-ba["mean_difference"].high, rel=1e-6)
    assert ab["mean_difference"].high == pytest.approx(-ba["mean_difference"].low, rel=1e-6)
    assert ab["wilcoxon"]["p_value"] == pytest.approx(ba["wilcoxon"]["p_value"])
    assert ab["direction"] in ("b > a", None) and ba["direction"] in ("b < a", None)


def test_inf_pairs_are_counted_and_ranked_largest():
    a, b = _pair(3, n=100)
    a[:5] = np.inf  # only b broken: a is larger there
    b[5:25] = np.inf  # only a broken: b is larger there
    a[25:28] = b[25:28] = np.inf  # neither broken: dropped from every test
    r = stats.paired_comparison(a, b, n_resamples=B)
    assert (r["n_pairs"], r["n_both_finite"], r["n_only_a_broken"], r["n_only_b_broken"],
            r["n_neither_broken"]) == (100, 72, 20, 5, 3)
    assert r["wilcoxon"]["n_used"] == 97
    # inf ranks above every finite value, unbroken pairs tied among themselves: a finite stand-in
    # with |d| = 1e6 on exactly those pairs (0 where both are unbroken) gives the same p-value
    a_big = np.where(np.isinf(a), np.where(np.isinf(b), 0.0, b + 1e6), a)
    b_big = np.where(np.isinf(b), np.where(np.isinf(a), 0.0, a + 1e6), b)
    big = stats.paired_comparison(a_big, b_big, n_resamples=B)
    assert r["wilcoxon"]["p_value"] == pytest.approx(big["wilcoxon"]["p_value"])
    assert r["wilcoxon"]["p_value"] < 0.05  # 20 vs 5 unbroken pairs favour b
    assert r["mean_difference"].estimate == pytest.approx((b[28:] - a[28:]).mean())


# ------------------------------------------------------------------------------- robust accuracy

def test_robust_accuracy_matches_direct_count_and_is_monotone():
    x = _rng(11).exponential(1.0, 300)
    x[:30] = np.inf
    grid = np.linspace(0, 4, 17)
    curve = stats.robust_accuracy_curve(x, grid)
    assert [c["eps"] for c in curve] == pytest.approx(list(grid))
    for c, eps in zip(curve, grid):
        k = int((x > eps).sum())
        ci = scipy.stats.binomtest(k, 300).proportion_ci(0.95, method="exact")
        assert c["n_robust"] == k and c["robust_fraction"].estimate == pytest.approx(k / 300)
        assert (c["robust_fraction"].low, c["robust_fraction"].high) == pytest.approx((ci.low, ci.high))
        assert c["n_robust"] >= 30  # the 30 unbroken samples are robust at every eps
    est = [c["robust_fraction"].estimate for c in curve]
    assert all(e1 >= e2 for e1, e2 in zip(est, est[1:])) and est[0] > est[-1]
    assert stats.robust_accuracy(x, 1e6)["n_robust"] == 30


def test_distance_equal_to_eps_is_not_robust():
    assert stats.robust_accuracy([0.5, 0.5, 0.6], 0.5)["n_robust"] == 1


def test_clean_acc_scaling():
    x = _rng(12).exponential(1.0, 200)
    r = stats.robust_accuracy(x, 0.5, clean_acc=0.8)
    f, u = r["robust_fraction"], r["robust_accuracy_upper"]
    assert u.estimate == pytest.approx(0.8 * f.estimate)
    assert (u.low, u.high) == pytest.approx((0.8 * f.low, 0.8 * f.high))
    r2 = stats.robust_accuracy(x, 0.5, clean_acc=0.8, n_test=1000)  # clean_acc uncertain too: wider
    assert r2["robust_accuracy_upper"].estimate == pytest.approx(u.estimate)
    assert r2["robust_accuracy_upper"].low < u.low and r2["robust_accuracy_upper"].high > u.high
    assert stats.robust_accuracy(x, 0.5)["robust_accuracy_upper"] is None


def test_standard_eps():
    assert stats.standard_eps("cifar10") == 0.5
    assert stats.standard_eps("imagenet1k") == stats.STANDARD_L2_EPS["imagenet"] == 3.0
    assert stats.standard_eps("Fashion_MNIST") == stats.STANDARD_L2_EPS["fashion_mnist"]
    assert stats.standard_eps("stanford_dogs") is None


# ------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("call, match", [
    (lambda: stats.distance_summary([1.0, float("nan")]), "l2 holds 1 NaN"),
    (lambda: stats.distance_summary([]), "l2 is empty"),
    (lambda: stats.distance_summary([1.0, -0.5]), "negative"),
    (lambda: stats.distance_summary(np.ones((2, 2))), "1-D"),
    (lambda: stats.paired_comparison([1.0, 2.0], [1.0]), "same length"),
    (lambda: stats.paired_comparison([1.0], [float("nan")]), "b holds 1 NaN"),
    (lambda: stats.paired_comparison([], []), "a is empty"),
    (lambda: stats.robust_accuracy([1.0], float("nan")), "eps"),
    (lambda: stats.robust_accuracy([1.0], 0.5, clean_acc=1.5), "clean_acc"),
    (lambda: stats.robust_accuracy_curve([], [0.5]), "l2 is empty"),
])
def test_bad_input_raises_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_seed_level_comparison_matches_scipy_t_interval_and_sign_count():
    from scipy import stats as st

    a = np.array([0.50, 0.52, 0.49, 0.55, 0.51])
    b = a + np.array([0.03, 0.01, 0.04, -0.01, 0.02])
    out = stats.seed_level_comparison(a, b)
    d = b - a
    low, high = st.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=st.sem(d))
    assert out["n_seeds"] == 5 and out["n_positive"] == 4 and out["n_negative"] == 1
    assert out["mean_difference"].low == pytest.approx(low) and out["mean_difference"].high == pytest.approx(high)
    assert out["sign_test_p_one_sided"] == pytest.approx(6 / 32)  # P(>= 4 of 5 heads)
    all_up = stats.seed_level_comparison(a, a + 0.01 + np.arange(5) * 1e-3)
    assert all_up["sign_test_p_one_sided"] == pytest.approx(1 / 32) and all_up["ci_excludes_zero"]
    with pytest.raises(ValueError, match="one number per seed"):
        stats.seed_level_comparison(a, b[:3])
