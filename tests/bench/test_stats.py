"""The statistical rules against known answers: Student's sleep data, a hand-computed TOST, a
hand-computed log-rank table, Holm on fixed p-values, the power of the MDE by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geoptim.bench import stats

# Student (1908) / Cushny & Peebles: extra hours of sleep of 10 patients under two drugs.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_paired_t_on_the_sleep_data():
    result = stats.paired_t(SLEEP_2, SLEEP_1)
    assert result.effect == pytest.approx(1.58)
    assert result.effect / result.se == pytest.approx(4.062128, abs=1e-5)
    assert result.df == 9 and result.n == 10
    assert result.p == pytest.approx(0.002833, abs=1e-6)
    # the textbook 95% interval of the mean difference: 0.7001 .. 2.4599
    assert (result.low, result.high) == pytest.approx((0.700114, 2.459886), abs=1e-5)


def test_paired_t_drops_incomplete_pairs_and_handles_no_spread():
    full = stats.paired_t(SLEEP_2, SLEEP_1)
    with_nan = stats.paired_t([*SLEEP_2, math.nan], [*SLEEP_1, 1.0])
    assert with_nan.p == pytest.approx(full.p) and with_nan.n == 10
    exact = stats.paired_t([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert (exact.effect, exact.low, exact.high, exact.p) == (0.5, 0.5, 0.5, 0.0)
    assert stats.paired_t([1.0, 2.0], [1.0, 2.0]).p == 1.0
    with pytest.raises(ValueError):
        stats.paired_t([1.0], [2.0])


def test_welch_t_on_the_sleep_data_as_unpaired():
    # R: t.test(extra ~ group, data = sleep): t = -1.8608, df = 17.776, p-value = 0.07939
    result = stats.welch_t(SLEEP_1, SLEEP_2)
    assert result.effect == pytest.approx(-1.58)
    assert result.effect / result.se == pytest.approx(-1.860813, abs=1e-5)
    assert result.df == pytest.approx(17.77647, abs=1e-4)
    assert result.p == pytest.approx(0.07939, abs=1e-5)


def _t4_cdf(t: float) -> float:
    """Student's t CDF with 4 degrees of freedom in closed form (independent of scipy)."""
    x = t / math.sqrt(4 + t * t)
    return 0.5 + 0.75 * x * (1 - x * x / 3)


def test_tost_by_hand():
    # d = (0, .2, .1, .3, -.1): mean 0.1, sum of squares 0.10, sd = sqrt(0.025), se = sd / sqrt 5
    d = [0.0, 0.2, 0.1, 0.3, -0.1]
    comparison = stats.paired_t(d, [0.0] * 5)
    se = math.sqrt(0.025 / 5)
    assert comparison.se == pytest.approx(se)
    # margin 0.5: the larger one-sided p is P(T4 < (0.1 - 0.5) / se)
    expected = _t4_cdf((0.1 - 0.5) / se)
    assert stats.tost(comparison, 0.5) == pytest.approx(expected, rel=1e-9)
    assert expected < 0.05  # equivalent within ±0.5
    # margin 0.15: P(T4 < -0.05 / se) is far above alpha: not shown equivalent
    assert stats.tost(comparison, 0.15) == pytest.approx(_t4_cdf(-0.05 / se), rel=1e-9)
    assert stats.tost(comparison, 0.15) > 0.05


def test_tost_agrees_with_the_90_percent_interval():
    rng = np.random.default_rng(0)
    for _ in range(50):
        sample = rng.normal(0.1, 0.3, 8)
        comparison = stats.paired_t(sample, np.zeros(8))
        margin = float(rng.uniform(0.05, 0.6))
        wide = stats.paired_t(sample, np.zeros(8), alpha=0.10)
        inside = -margin < wide.low and wide.high < margin
        assert (stats.tost(comparison, margin) < 0.05) == inside


def test_holm_on_fixed_pvalues():
    # sorted: .005 x4 = .02, .01 x3 = .03, .03 x2 = .06, .04 x1 = .04 -> kept monotone at .06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.02, None, 0.9]) == [pytest.approx(0.04), None, pytest.approx(0.9)]
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([]) == []


def test_logrank_by_hand():
    # a: events at 1, 3, censored at 5; b: events at 2, 4, 6.
    # t=1: r 6, r_a 3 -> E 1/2, V 1/4;  t=2: r 5, r_a 2 -> E 2/5, V 6/25;
    # t=3: r 4, r_a 2 -> E 1/2, V 1/4;  t=4: r 3, r_a 1 -> E 1/3, V 2/9;  t=6: r_a 0.
    # O_a = 2, E_a = 26/15, V = 433/450, chi2 = (4/15)^2 / V = 32/433.
    result = stats.logrank([1, 3, 5], [True, True, False], [2, 4, 6], [True, True, True])
    variance = 433 / 450
    assert result.p == pytest.approx(math.erfc(math.sqrt(32 / 433 / 2)), rel=1e-12)
    assert result.effect == pytest.approx((4 / 15) / variance)
    assert result.se == pytest.approx(1 / math.sqrt(variance))
    # swapping the samples flips the sign of the log hazard ratio, not the p-value
    swapped = stats.logrank([2, 4, 6], [True] * 3, [1, 3, 5], [True, True, False])
    assert swapped.effect == pytest.approx(-result.effect) and swapped.p == pytest.approx(result.p)


def test_logrank_counts_censored_runs_instead_of_dropping_them():
    # a: all five runs generalise at step 100; b: two generalise sooner, three never do
    # (censored at the budget 500). Dropping b's censored runs would make b look faster.
    a = stats.logrank(
        [100] * 5, [True] * 5, [50, 60, 500, 500, 500], [True, True, False, False, False]
    )
    assert a.effect > 0  # a's events come sooner overall
    nothing = stats.logrank([10, 20], [False, False], [30, 40], [False, False])
    assert nothing.p == 1.0 and math.isinf(nothing.mde())


def test_km_median():
    assert stats.km_median([1, 2, 3, 4], [True] * 4) == 2
    assert stats.km_median([1, 5, 5, 5], [True, False, False, False]) == math.inf
    # censored at 2 leaves 2 at risk after: S(3) = 3/4 * 1/2
    assert stats.km_median([1, 2, 3, 4], [True, False, True, True]) == 3


def test_mde_has_the_stated_power_by_simulation():
    n, sd = 10, 1.0
    se = sd / math.sqrt(n)
    mde = stats.minimum_detectable_effect(se, n - 1)
    assert 0.99 < mde < 1.0  # a little above the normal approximation (1.96 + 0.84) se = 0.885
    rng = np.random.default_rng(1)
    d = rng.normal(mde, sd, size=(40_000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    assert np.mean(np.abs(t) > 2.262157) == pytest.approx(0.8, abs=0.01)  # t_{.975, 9}
    assert stats.minimum_detectable_effect(0.0, 9) == 0.0
    assert math.isinf(stats.minimum_detectable_effect(math.nan, 9))


def test_seeds_needed_matches_textbook_sample_sizes():
    assert stats.seeds_needed(1.0, 0.5, paired=True) == 34  # paired, d_z = 0.5
    assert stats.seeds_needed(1.0, 0.5, paired=False) == 64  # two groups, d = 0.5
    assert stats.seeds_needed(1.0, 0.8, paired=False) == 26
    mde10 = stats.minimum_detectable_effect(1 / math.sqrt(10), 9)  # inverts the MDE at n = 10
    assert stats.seeds_needed(1.0, mde10 * 1.0001, paired=True) == 10
    assert stats.seeds_needed(1.0, mde10 * 0.9999, paired=True) == 11


def test_power_by_integration_equals_the_noncentral_t_and_serves_where_scipy_fails():
    from scipy import stats as sps

    crit = sps.t.ppf(0.975, 3)
    exact = sps.nct.sf(crit, 3, 2.0) + sps.nct.cdf(-crit, 3, 2.0)
    assert stats.power_by_integration(2.0, crit, 3) == pytest.approx(exact, rel=1e-7)
    # df = 1 (two seeds), nc = 8: scipy's nct gives NaN; the power is finite and monotone in nc
    powers = [stats.power_of(nc, 1.0, 1.0) for nc in (4.0, 8.0, 16.0)]
    assert all(0 < p < 1 for p in powers) and powers == sorted(powers)
    assert math.isfinite(stats.minimum_detectable_effect(1.0, 1.0))
