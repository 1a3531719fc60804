"""The statistics the benchmark's verdicts rest on (numpy and scipy only).

Two samples ``a`` and ``b`` of a metric (one value per seed) are compared by their difference
``a - b``:

* :func:`paired_t`: seeds paired (seed k gives both arms the same initialisation and data order),
  ``d_k = a_k - b_k``, ``t = mean(d) / (sd(d) / sqrt(n))`` with ``n - 1`` degrees of freedom;
  :func:`welch_t` is the fallback for unpaired samples, ``se = sqrt(s_a^2/n_a + s_b^2/n_b)``
  with the Welch-Satterthwaite degrees of freedom.
* :func:`minimum_detectable_effect`: the smallest true difference the test detects with
  probability ``power`` (two-sided, level ``alpha``), from the standard error and degrees of
  freedom measured: the ``delta`` solving ``P(|T'| > t_{1-alpha/2}) = power`` for ``T'`` a
  noncentral t with noncentrality ``delta / se``. :func:`seeds_needed` inverts it for ``n``.
* :func:`tost`: two one-sided tests of equivalence within ``±margin``;
  ``p = max(P(T > (d + margin)/se), P(T < (d - margin)/se))``, equivalent when ``p < alpha``,
  i.e. when the ``1 - 2 alpha`` interval lies inside the margin.
* :func:`holm`: Holm-Bonferroni adjusted p-values, ``p~_(i) = max_{j<=i} min(1, (m-j+1) p_(j))``
  over the sorted p-values.
* :func:`logrank`: the two-sample log-rank test for times-to-event with right censoring (a run
  that never reaches the event is censored at its budget), with the Peto estimate of the log
  hazard ratio ``(O - E) / V`` and its standard error ``1 / sqrt(V)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import integrate, optimize, stats

ALPHA = 0.05
POWER = 0.8


@dataclass(frozen=True)
class Comparison:
    """A difference ``a - b`` (or a log hazard ratio) with its test.

    ``low`` / ``high`` bound the ``1 - alpha`` confidence interval; ``se`` and ``df`` are what
    the minimum detectable effect is computed from (``df = inf``: a normal statistic).
    """

    test: str
    effect: float
    low: float
    high: float
    p: float
    se: float
    df: float
    n: int
    alpha: float = ALPHA

    def mde(self, power: float = POWER) -> float:
        """The minimum detectable effect of this test at its ``se`` and ``df``."""
        return minimum_detectable_effect(self.se, self.df, self.alpha, power)


def finite(values: Sequence[float]) -> np.ndarray:
    """The finite entries of ``values`` as a float array."""
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]


def _t_comparison(
    test: str, effect: float, se: float, df: float, n: int, alpha: float
) -> Comparison:
    if se == 0.0:  # no spread at all: the difference is exact
        p = 1.0 if effect == 0.0 else 0.0
        return Comparison(test, effect, effect, effect, p, 0.0, df, n, alpha)
    t = effect / se
    p = float(2 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return Comparison(test, effect, effect - half, effect + half, p, se, df, n, alpha)


def paired_t(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> Comparison:
    """Paired t-test of ``a - b`` (same length, pair k = seed k); pairs with a non-finite
    member are dropped. Needs at least two pairs."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError("paired samples must have the same length")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    n = len(d)
    if n < 2:
        raise ValueError("a paired t-test needs at least two complete pairs")
    se = float(np.std(d, ddof=1)) / math.sqrt(n)
    return _t_comparison("paired t", float(d.mean()), se, n - 1, n, alpha)


def welch_t(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> Comparison:
    """Welch's unequal-variance t-test of ``mean(a) - mean(b)``; non-finite values dropped.
    Needs at least two values on each side."""
    a, b = finite(a), finite(b)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's t-test needs at least two values per sample")
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        df = float(len(a) + len(b) - 2)
    else:
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return _t_comparison("Welch t", float(a.mean() - b.mean()), se, df, min(len(a), len(b)), alpha)


def power_of(delta: float, se: float, df: float, alpha: float = ALPHA) -> float:
    """The probability that a two-sided level-``alpha`` t-test (normal test for ``df = inf``)
    rejects when the true effect is ``delta`` and the standard error ``se``."""
    if se == 0.0:
        return 1.0 if delta != 0.0 else alpha
    nc = abs(delta) / se
    if math.isinf(df):
        z = stats.norm.ppf(1 - alpha / 2)
        return float(stats.norm.sf(z - nc) + stats.norm.cdf(-z - nc))
    crit = stats.t.ppf(1 - alpha / 2, df)
    power = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    # scipy's noncentral t returns NaN at few degrees of freedom and large nc
    return power if math.isfinite(power) else power_by_integration(nc, crit, df)


def power_by_integration(nc: float, crit: float, df: float) -> float:
    """``P(|T| > crit)`` for ``T = (Z + nc) / sqrt(V / df)``, ``Z`` standard normal and ``V ~
    chi^2(df)``: the noncentral-t power by its definition, integrated over ``V``."""

    def rejects(v: float) -> float:
        c = crit * math.sqrt(v / df)
        return (stats.norm.sf(c - nc) + stats.norm.cdf(-c - nc)) * stats.chi2.pdf(v, df)

    return float(integrate.quad(rejects, 0.0, math.inf, limit=200)[0])


def minimum_detectable_effect(
    se: float, df: float, alpha: float = ALPHA, power: float = POWER
) -> float:
    """The effect detected with probability ``power`` at standard error ``se``, ``df`` degrees
    of freedom (two-sided, level ``alpha``); ``inf`` when it cannot be computed."""
    if not (math.isfinite(se) and df > 0):
        return math.inf
    if se == 0.0:
        return 0.0
    upper = 4.0
    while power_of(upper * se, se, df, alpha) < power:
        upper *= 2
    nc = optimize.brentq(lambda k: power_of(k * se, se, df, alpha) - power, 0.0, upper, xtol=1e-10)
    return float(nc * se)


def seeds_needed(
    sd: float,
    effect: float,
    paired: bool = True,
    alpha: float = ALPHA,
    power: float = POWER,
    most: int = 100_000,
) -> int:
    """The smallest number of seeds per arm at which a paired t-test (``sd``: spread of the
    per-seed differences) or a two-sample t-test (``sd``: spread within each arm, equal
    sizes) detects ``effect`` with probability ``power``."""
    if effect == 0.0 or not math.isfinite(sd):
        return most

    def powered(n: int) -> bool:
        se = sd / math.sqrt(n) if paired else sd * math.sqrt(2 / n)
        return power_of(effect, se, n - 1 if paired else 2 * n - 2, alpha) >= power

    low, high = 1, 2  # powered(high) once found; power grows with n
    while not powered(high):
        if high >= most:
            return most
        low, high = high, min(2 * high, most)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if powered(mid) else (mid, high)
    return high


def tost(comparison: Comparison, margin: float, alpha: float = ALPHA) -> float:
    """The two one-sided tests' p-value for ``|true effect| < margin``: the larger of the two
    one-sided p-values (normal tails for ``df = inf``)."""
    d, se, df = comparison.effect, comparison.se, comparison.df
    if se == 0.0:
        return 0.0 if abs(d) < margin else 1.0
    dist = stats.norm if math.isinf(df) else stats.t(df)
    p_low = dist.sf((d + margin) / se)  # H0: effect <= -margin
    p_high = dist.cdf((d - margin) / se)  # H0: effect >= +margin
    return float(max(p_low, p_high))


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values, in the input order; ``None`` / NaN entries (no test)
    are left as ``None`` and do not count in the family size."""
    tested = [(i, float(p)) for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    m = len(tested)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (i, p) in enumerate(sorted(tested, key=lambda item: item[1])):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def logrank(
    times_a: Sequence[float],
    events_a: Sequence[bool],
    times_b: Sequence[float],
    events_b: Sequence[bool],
    alpha: float = ALPHA,
) -> Comparison:
    """Two-sample log-rank test with right censoring (``events[i]`` False: censored at
    ``times[i]``; at a tie a censored run still counts as at risk).

    At each distinct event time ``t``: ``d`` events among ``r`` at risk, ``d_a`` and ``r_a`` of
    them in sample a; ``E_a = sum d r_a / r``,
    ``V = sum d (r_a / r)(1 - r_a / r)(r - d) / (r - 1)``; the statistic ``(O_a - E_a)^2 / V``
    is chi-square(1). The effect is the Peto log hazard ratio of a against b, ``(O_a - E_a)/V``
    (positive: a's events come sooner), with standard error ``1 / sqrt(V)``.
    """
    ta, tb = np.asarray(times_a, dtype=float), np.asarray(times_b, dtype=float)
    ea, eb = np.asarray(events_a, dtype=bool), np.asarray(events_b, dtype=bool)
    times = np.concatenate([ta, tb])
    events = np.concatenate([ea, eb])
    in_a = np.concatenate([np.ones(len(ta), bool), np.zeros(len(tb), bool)])
    observed = expected = variance = 0.0
    for t in np.unique(times[events]):
        at_risk = times >= t
        r, r_a = at_risk.sum(), (at_risk & in_a).sum()
        hit = events & (times == t)
        d, d_a = hit.sum(), (hit & in_a).sum()
        observed += d_a
        expected += d * r_a / r
        if r > 1:
            variance += d * (r_a / r) * (1 - r_a / r) * (r - d) / (r - 1)
    n = min(len(ta), len(tb))
    if variance == 0.0:
        return Comparison("log-rank", 0.0, -math.inf, math.inf, 1.0, math.inf, math.inf, n, alpha)
    statistic = (observed - expected) ** 2 / variance
    p = float(stats.chi2.sf(statistic, 1))
    effect, se = (observed - expected) / variance, 1 / math.sqrt(variance)
    half = float(stats.norm.ppf(1 - alpha / 2)) * se
    return Comparison("log-rank", effect, effect - half, effect + half, p, se, math.inf, n, alpha)


def km_median(times: Sequence[float], events: Sequence[bool]) -> float:
    """The Kaplan-Meier median time (the first time the survival estimate falls to 0.5 or
    below); ``inf`` when it never does (more than half the runs censored before)."""
    t, e = np.asarray(times, dtype=float), np.asarray(events, dtype=bool)
    survival = 1.0
    for time in np.unique(t[e]):
        at_risk = (t >= time).sum()
        survival *= 1 - (e & (t == time)).sum() / at_risk
        if survival <= 0.5:
            return float(time)
    return math.inf


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    r"""Spearman's rank correlation :math:`\rho` of ``x`` and ``y`` (the Pearson correlation of
    their ranks, ties averaged); NaN for fewer than three pairs or a constant side. Any
    monotone transform of ``y`` (e.g. its log) leaves it unchanged."""
    if len(x) != len(y):
        raise ValueError("x and y differ in length")
    if len(x) < 3 or len(set(x)) == 1 or len(set(y)) == 1:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def sign_test(values: Sequence[float]) -> tuple[int, int, float]:
    """``(negative, positive, p)``: how many finite nonzero ``values`` fall on each side of 0 and
    the exact two-sided binomial p-value of that split under a fair coin (1 with none)."""
    negative = sum(1 for v in values if math.isfinite(v) and v < 0)
    positive = sum(1 for v in values if math.isfinite(v) and v > 0)
    if negative + positive == 0:
        return 0, 0, 1.0
    return negative, positive, float(stats.binomtest(negative, negative + positive).pvalue)
