"""The report's statistics (`isep.results.stats`) against values worked out by hand, and the
bootstrap's coverage on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from isep.results import stats


def test_iqm_is_the_mean_of_the_middle_half():
    assert stats.iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)  # 3, 4, 5, 6
    assert stats.iqm(np.array([0.0, 0.0, 0.0, 4.0])) == pytest.approx(0.0)  # 0, 0
    assert stats.iqm(np.array([1.0, 2.0, 9.0])) == pytest.approx(4.0)  # 3 values: nothing trimmed
    assert stats.iqm(np.array([100.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -50.0])) == pytest.approx(3.5)  # outliers gone


def test_bootstrap_ci_of_the_mean_by_hand():
    """[0, 0, 0, 4]: a resample's mean is k with k ~ Binomial(4, 1/4); P(k ≤ 2) = 0.949 < 0.975 ≤
    P(k ≤ 3) = 0.996 and P(k = 0) = 0.316 > 0.025, so the 95 % percentile interval is [0, 3] —
    inside the data's range [0, 4]. [0, 0, 3]: k ~ Binomial(3, 1/3), P(k ≤ 2) = 0.963 < 0.975,
    so [0, 3]."""
    e = stats.cell_estimates(np.array([0.0, 0.0, 0.0, 4.0]))
    assert (e["mean"].value, e["mean"].low, e["mean"].high) == (1.0, 0.0, 3.0)
    e = stats.cell_estimates(np.array([0.0, 0.0, 3.0]))
    assert (e["mean"].value, e["mean"].low, e["mean"].high) == (1.0, 0.0, 3.0)
    # the median of [1, 2, 3] resampled: 1 when two or three draws are 1 (7/27 = 0.26 > 0.025), 3 likewise
    e = stats.cell_estimates(np.array([1.0, 2.0, 3.0]))["median"]
    assert (e.value, e.low, e.high) == (2.0, 1.0, 3.0)
    # all seeds equal: the interval is the point; one seed: no interval
    same = stats.cell_estimates(np.array([5.0, 5.0, 5.0]))["iqm"]
    assert (same.low, same.high) == (5.0, 5.0)
    one = stats.cell_estimates(np.array([5.0]))["mean"]
    assert one.value == 5.0 and not one.has_interval


def test_difference_and_stratified_aggregates_by_hand():
    d = stats.difference(np.array([10.0, 10.0, 10.0]), np.array([1.0, 2.0, 3.0]))
    assert d.value == pytest.approx(8.0) and (d.low, d.high) == pytest.approx((7.0, 9.0))  # y's mean spans [1, 3]
    assert d.excludes(0.0) and not d.excludes(8.0)
    agg = stats.across_tasks([np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0, 40.0])])
    assert agg["mean"].value == pytest.approx((2.0 + 25.0) / 2)
    assert agg["iqm"].value == pytest.approx(np.mean([2.0, 3.0, 10.0, 20.0, 30.0]))  # 7 runs pooled, 1 trimmed at each end
    # stratified: each task's runs are resampled apart, so the mean of task means stays inside
    # [(1 + 10) / 2, (3 + 40) / 2] and never mixes one task's runs into the other's
    assert 5.5 <= agg["mean"].low < agg["mean"].value < agg["mean"].high <= 21.5


def test_bootstrap_ci_covers_the_true_mean_at_nominal_95_percent():
    """200 synthetic experiments of 20 runs each (fixed seeds): the 95 % CI holds the true mean in
    at least 90 % of them (the percentile bootstrap is a little narrow at small n)."""
    covered = 0
    for rep in range(200):
        runs = np.random.default_rng(10_000 + rep).normal(50.0, 10.0, size=20)
        e = stats.cell_estimates(runs)["mean"]
        covered += e.low <= 50.0 <= e.high
    assert covered >= 180, covered


def test_probability_of_improvement():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.0, 1.0, 200), rng.normal(0.0, 1.0, 200)
    same = stats.probability_of_improvement([a], [b])
    assert same.value == pytest.approx(0.5, abs=0.06) and same.low < 0.5 < same.high
    apart = stats.probability_of_improvement([rng.normal(10.0, 1.0, 5)], [rng.normal(0.0, 1.0, 5)])
    assert (apart.value, apart.low, apart.high) == (1.0, 1.0, 1.0)
    # by hand: [1, 2, 3] against [0, 2, 4]: wins 1 + 1 + 2, one tie (½) of 9 pairs = 0.5
    assert stats.probability_of_improvement([np.array([1.0, 2.0, 3.0])], [np.array([0.0, 2.0, 4.0])]).value == 0.5
    # over tasks: the mean of each task's probability (1 and 0.5)
    two = stats.probability_of_improvement([np.array([5.0, 6.0]), np.array([1.0, 2.0, 3.0])],
                                           [np.array([1.0, 2.0]), np.array([0.0, 2.0, 4.0])])
    assert two.value == pytest.approx(0.75)


def test_performance_profile_and_curve_band():
    frac, low, high = stats.performance_profile([np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0])],
                                                np.array([0.0, 2.5, 15.0, 50.0]))
    assert frac.tolist() == [1.0, 0.6, 0.2, 0.0]
    assert (low <= frac).all() and (frac <= high).all() and low[0] == high[0] == 1.0 and high[-1] == 0.0
    mean, low, high, count = stats.curve_band(np.array([[1.0, 2.0, np.nan], [2.0, 3.0, 4.0], [3.0, 4.0, 5.0]]))
    assert mean.tolist() == [2.0, 3.0, 4.5] and count.tolist() == [3, 3, 2]
    assert (low[0], high[0]) == (1.0, 3.0) and (low[2], high[2]) == (4.0, 5.0)
