"""The interval policy (mlxinterp.analysis.stats, docs/statistics.md): coverage on known distributions,
edge cases, Holm against a hand computation.

Coverage: each 95 % interval kind is computed on 4,000 simulated data sets with a known truth and must
cover it 93-97 % of the time. 2,000 draws (Monte-Carlo SE 0.005) were too few for a band 2 points wide:
a correct interval with true coverage 94.5 % (the studentized bootstrap at n = 30; measured on 10,000
draws) fell to 92.85 % on the first 2,000 draws of seed 7, where the exact t-interval also covered only
94.1 % of the same data sets. At 4,000 draws the SE is 0.0035 and 93 % is > 4 SE below 94.5 %. Bootstrap intervals use 500 resamples here instead of 2,000 to keep the file fast; that
adds noise to each bound, which can only make coverage worse, so passing with 500 is the stricter test.
Seeds are fixed, so a pass is reproducible. A control shows the check has power: the item-level interval
on clustered data (the mistake cluster_mean_ci exists to prevent) covers far less than 93 %.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from mlxinterp.analysis.stats import (SMALL_N, bootstrap_ci, cluster_mean_ci, family_cis, holm, mean_ci,
                                      p_value_mean, paired_binary_diff_ci, paired_diff_ci, proportion_ci)
from mlxinterp.core.interval import Interval

DRAWS = 4000
RESAMPLES = 500
BAND = (0.93, 0.97)


def coverage(draw, interval, truth: float, seed: int = 7, draws: int = DRAWS) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for i in range(draws):
        iv = interval(draw(rng), i)
        hits += iv.low <= truth <= iv.high
    return hits / draws


# ------------------------------------------------------------------ coverage


def test_wilson_covers_a_proportion():
    k = np.random.default_rng(1).binomial(40, 0.3, size=DRAWS)
    table = {j: proportion_ci(int(j), 40) for j in np.unique(k)}  # 41 possible outcomes: compute each once
    cov = np.mean([table[j].low <= 0.3 <= table[j].high for j in k])
    assert BAND[0] <= cov <= BAND[1], cov


@pytest.mark.parametrize("name,draw,truth", [
    ("normal n=30", lambda r: r.normal(1.0, 2.0, 30), 1.0),
    ("exponential n=50", lambda r: r.exponential(1.0, 50), 1.0),  # skewed: where percentile/BCa under-cover
])
def test_mean_ci_covers_the_mean(name, draw, truth):
    cov = coverage(draw, lambda x, i: mean_ci(x, n_resamples=RESAMPLES, seed=i), truth)
    assert BAND[0] <= cov <= BAND[1], (name, cov)
    assert mean_ci(draw(np.random.default_rng(0))).method == "studentized bootstrap"


def test_small_samples_get_a_t_interval_that_covers_and_says_so():
    iv = mean_ci(np.random.default_rng(0).normal(size=8))
    assert iv.method == "t-interval" and iv.warning == f"n < {SMALL_N}: t-interval" and iv.n == 8
    cov = coverage(lambda r: r.normal(1.0, 2.0, 8), lambda x, i: mean_ci(x), 1.0)
    assert BAND[0] <= cov <= BAND[1], cov


def test_paired_difference_covers_the_mean_difference():
    def draw(r):  # a large item effect shared by both arms: only the pairing makes the lift visible
        item = r.normal(0.0, 3.0, 30)
        return item + 0.4 + r.normal(0.0, 1.0, 30), item + r.normal(0.0, 1.0, 30)

    cov = coverage(draw, lambda ab, i: paired_diff_ci(*ab, n_resamples=RESAMPLES, seed=i), 0.4)
    assert BAND[0] <= cov <= BAND[1], cov
    a, b = draw(np.random.default_rng(0))
    assert paired_diff_ci(a, b).method == "paired differences, studentized bootstrap"


LABELS = np.repeat(np.arange(10), 8)


def clustered(r, between: float = 1.0):  # 10 clusters x 8 items, cluster effect sd `between`, item sd 1, mean 0
    return np.repeat(r.normal(0.0, between, 10), 8) + r.normal(0.0, 1.0, 80)


@pytest.mark.parametrize("between", [1.0, 0.2])  # 0.2: weak clusters, where redrawing items too over-covers
def test_cluster_bootstrap_covers_the_mean_of_nested_items(between):
    cov = coverage(lambda r: clustered(r, between),
                   lambda x, i: cluster_mean_ci(x, LABELS, n_resamples=RESAMPLES, seed=i), 0.0)
    assert BAND[0] <= cov <= BAND[1], (between, cov)
    iv = cluster_mean_ci(clustered(np.random.default_rng(0)), LABELS)
    assert iv.n == 80 and iv.n_clusters == 10 and iv.to_dict()["n_clusters"] == 10


def test_the_coverage_check_catches_an_interval_that_ignores_clusters():
    cov = coverage(clustered, lambda x, i: mean_ci(x, n_resamples=RESAMPLES, seed=i), 0.0, draws=1000)
    assert cov < 0.8, cov  # items treated as independent: ~2.4x too narrow (64 % on 4,000 draws)


# ------------------------------------------------------------------ edge cases


def test_empty_inputs_give_no_estimate():
    for iv in (mean_ci([]), bootstrap_ci([], np.median), cluster_mean_ci([], []), proportion_ci(0, 0),
               paired_diff_ci([], []), paired_binary_diff_ci([]), mean_ci([np.nan, np.inf])):
        assert iv.estimate is None and iv.low is None and iv.high is None and iv.n == 0


def test_one_value_gives_an_estimate_without_an_interval():
    iv = mean_ci([2.5])
    assert (iv.estimate, iv.low, iv.high, iv.n) == (2.5, None, None, 1) and "n = 1" in iv.warning
    assert mean_ci([1.0]).method == "Wilson" and mean_ci([1.0]).low < 1.0  # one trial still bounds a rate


def test_non_finite_values_are_dropped_and_counted():
    iv = mean_ci([1.0, np.nan, 2.0, 3.0, np.inf])
    assert iv.n == 3 and iv.estimate == 2.0 and iv.warning.startswith("2 non-finite value(s) dropped")
    p = paired_diff_ci([1.0, 2.0, np.nan, 4.0], [0.0, np.nan, 1.0, 1.0])
    assert p.n == 2 and p.estimate == 2.0 and "2 non-finite" in p.warning
    c = cluster_mean_ci([1.0, np.nan, 2.0], ["a", "a", "b"])
    assert c.n == 2 and c.n_clusters == 2 and "1 non-finite" in c.warning


def test_constant_binary_data_never_get_a_zero_width_interval():
    for values in ([0.0] * 24, [1.0] * 24):
        for iv in (mean_ci(values), bootstrap_ci(values)):  # the default statistic is the mean
            assert iv.method == "Wilson" and iv.high - iv.low > 0.1
    assert mean_ci([0.0] * 24).high == pytest.approx(proportion_ci(0, 24).high)
    c = cluster_mean_ci([0.0] * 24, LABELS[:24])
    assert c.high > 0.1 and "clusters ignored" in c.warning


def test_constant_continuous_data_say_the_spread_is_not_estimable():
    for iv in (mean_ci([0.5] * 30), bootstrap_ci([0.5] * 30, np.median), cluster_mean_ci([0.5] * 30, LABELS[:30])):
        assert iv.low == iv.high == 0.5 and "not estimable" in iv.warning


def test_paired_binary_lifts_never_collapse():
    n = 24
    all_up = paired_binary_diff_ci([1.0] * n)
    assert all_up.estimate == 1.0 and all_up.high == 1.0
    assert all_up.low == pytest.approx(2 * proportion_ci(n, n).low - 1) and all_up.low < 0.8
    all_down = paired_binary_diff_ci([-1.0] * n)
    assert (all_down.low, all_down.high) == (-1.0, -all_up.low)
    # 0/1 arms route to it through paired_diff_ci
    assert paired_diff_ci([1.0] * n, [0.0] * n) == all_up
    sparse = paired_binary_diff_ci([1.0] + [0.0] * 23)  # one discordant pair among 24
    assert sparse.low < 0 < sparse.estimate < sparse.high and sparse.warning


def test_sparse_data_fall_back_to_t_when_the_bootstrap_t_is_undefined():
    iv = mean_ci([5.0] + [0.0] * 29)  # most resamples have zero spread
    assert iv.method == "t-interval" and "studentized bootstrap undefined" in iv.warning
    assert iv.low < iv.estimate < iv.high


def test_few_clusters_fall_back_to_a_t_interval_over_cluster_means():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 9.0])
    g = ["a", "a", "b", "b", "c", "c"]
    iv = cluster_mean_ci(x, g)
    means = np.array([1.5, 3.5, 7.0])
    t = sps.t.ppf(0.975, 2) * means.std(ddof=1) / math.sqrt(3)
    assert iv.n == 6 and iv.n_clusters == 3 and "3 clusters < 5" in iv.warning
    assert (iv.estimate, iv.low, iv.high) == pytest.approx((means.mean(), means.mean() - t, means.mean() + t))
    one = cluster_mean_ci([1.0, 2.0], ["a", "a"])
    assert one.low is None and one.n_clusters == 1


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="equal length"):
        paired_diff_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="one cluster label per value"):
        cluster_mean_ci([1.0, 2.0], ["a"])
    with pytest.raises(ValueError, match="1-D"):
        mean_ci([[1.0, 2.0]])
    with pytest.raises(ValueError, match="successes"):
        proportion_ci(5, 4)


def test_other_statistics_use_bca_and_warn_below_20():
    small = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.5, 6.0], np.median)
    assert small.method == "BCa bootstrap" and small.warning.startswith("n < 20") and small.low <= 3.5 <= small.high
    x = np.random.default_rng(0).normal(size=40)
    y = x + np.random.default_rng(1).normal(size=40)
    r = bootstrap_ci(x, lambda a, b: np.corrcoef(a, b)[0, 1], paired_with=y)
    assert r.n == 40 and r.warning is None and r.low < np.corrcoef(x, y)[0, 1] < r.high


def test_warning_and_clusters_are_stored_only_when_set():
    iv = Interval(0.1, 0.0, 0.2, 80, "two-stage cluster bootstrap", warning="w", n_clusters=10)
    stored = json.loads(json.dumps(iv.to_dict()))
    assert stored["warning"] == "w" and stored["n_clusters"] == 10 and Interval.from_dict(stored) == iv
    assert set(Interval(0.1, 0.0, 0.2, 5, "x").to_dict()) == {"estimate", "low", "high", "n", "method"}


# ------------------------------------------------------------------ families and p-values


def test_holm_matches_a_hand_computation():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adj = holm([0.5, np.nan, 0.01])  # NaN stays NaN and is not counted: m = 2
    assert adj[0] == pytest.approx(0.5) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.02)
    assert holm([0.9, 0.2]) == pytest.approx([0.9, 0.4]) and holm([0.9, 0.8]) == [1.0, 1.0] and holm([]) == []


def test_family_cis_are_simultaneous_and_record_their_level():
    groups = [np.random.default_rng(i).normal(size=25) for i in range(10)]
    fam = family_cis(groups)
    one = mean_ci(groups[0])
    assert all(iv.level == pytest.approx(0.995) and "Bonferroni-simultaneous over 10" in iv.method for iv in fam)
    assert fam[0].to_dict()["level"] == pytest.approx(0.995)
    assert fam[0].high - fam[0].low > one.high - one.low
    assert family_cis([]) == []


def test_p_value_mean_is_the_one_sample_t_test():
    x = [0.3, -0.1, 0.8, 0.5, 0.2, np.nan]
    assert p_value_mean(x) == pytest.approx(sps.ttest_1samp(x[:5], 0.0).pvalue)
    assert p_value_mean(x, popmean=0.34) > 0.9
    assert math.isnan(p_value_mean([1.0])) and math.isnan(p_value_mean([2.0, 2.0, 2.0]))


def test_intervals_of_bounded_outcomes_stay_in_their_range():
    """A cluster or t-interval of values in {-1, 0, 1} never reaches past +-1."""
    from mlxinterp.analysis.stats import cluster_mean_ci, paired_binary_diff_ci

    values = [1] * 27 + [0, 0, 1, 1, 0, 1, 1, 1]
    iv = cluster_mean_ci(values, [i % 5 for i in range(len(values))])
    assert 0.0 <= iv.low <= iv.estimate <= iv.high <= 1.0
    small = paired_binary_diff_ci([1, 1, 1, 1, 0, 1])  # n < 20: t-interval
    assert -1.0 <= small.low <= small.estimate <= small.high <= 1.0
