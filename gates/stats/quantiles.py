"""Quantiles with distribution-free confidence intervals, and the green/blue quantile ratio.

Why order statistics: SD latencies are skewed and multi-modal (a spike component from queueing,
compilation, CPU contention), so normal-theory intervals are wrong exactly in the tail we care
about. For the p-quantile of a continuous distribution, the number of observations below it is
Binomial(n, p), which gives an exact, distribution-free interval [x_(l), x_(u)] (Hahn & Meeker,
*Statistical Intervals*, 1991, sec. 5.2; Conover, *Practical Nonparametric Statistics*, 3.2).
When n is too small for the requested confidence, the bound is infinite and reported as such:
an honest "we cannot bound P99 with 40 samples" rather than a fabricated number.

The ratio interval combines the two per-arm intervals at 1 - (1 - conf)/2 each (Bonferroni), so
its coverage is at least ``conf_level`` without any distributional assumption.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from gates._validation import as_latencies, check_probability

__all__ = ["QuantileEstimate", "QuantileRatio", "quantile_ci", "quantile_ratio"]


@dataclass(frozen=True)
class QuantileEstimate:
    """A sample quantile with an exact order-statistic confidence interval.

    ``ci_low`` may be 0.0 only if data are 0; an unbounded side is ``-inf``/``inf``.
    """

    quantile: float
    value: float
    ci_low: float
    ci_high: float
    conf_level: float
    n: int

    @property
    def bounded(self) -> bool:
        """Whether both ends of the interval are finite (enough data for this quantile)."""
        return math.isfinite(self.ci_low) and math.isfinite(self.ci_high)


@dataclass(frozen=True)
class QuantileRatio:
    """Green/blue ratio of one quantile with a conservative (Bonferroni) interval."""

    quantile: float
    estimate: float
    ci_low: float
    ci_high: float
    conf_level: float


def _order_stat_bounds(n: int, q: float, conf_level: float) -> tuple[int | None, int | None]:
    """0-based indices (l, u) of the order statistics bounding the q-quantile, or None if unbounded.

    Equal-tailed: P(X_(l+1) <= xi_q) >= 1 - a/2 and P(X_(u+1) >= xi_q) >= 1 - a/2 with
    a = 1 - conf_level, using B ~ Binomial(n, q) = #observations below xi_q.
    """
    a = 1.0 - conf_level
    # Lower bound: largest l (1-based) with P(B >= l) >= 1 - a/2, i.e. P(B <= l-1) <= a/2.
    k = np.arange(0, n + 1)
    cdf = stats.binom.cdf(k, n, q)
    lower_ok = np.flatnonzero(cdf <= a / 2)  # l-1 values
    lo = int(lower_ok[-1]) if lower_ok.size else None  # 0-based index l-1 -> x_(l) at [l-1]
    # Upper bound: smallest u (1-based) with P(B <= u-1) >= 1 - a/2.
    upper_ok = np.flatnonzero(cdf >= 1 - a / 2)
    hi: int | None = int(upper_ok[0]) if upper_ok.size else None
    if hi is not None and hi > n - 1:
        hi = None
    return lo, hi


def quantile_ci(values: ArrayLike, q: float, *, conf_level: float = 0.95,
                arm: str = "sample") -> QuantileEstimate:
    """Estimate the ``q``-quantile of ``values`` with an exact distribution-free interval.

    The point estimate is numpy's default (linear interpolation, Hyndman-Fan type 7), which
    matches what Prometheus users and spreadsheets expect for P50/P95/P99.

    Raises:
        LatencyInputError: NaN, inf or negative values.
        NoDataError: empty sample.
    """
    q = check_probability(q, "quantile")
    conf_level = check_probability(conf_level, "conf_level")
    x = np.sort(as_latencies(values, arm=arm))
    n = x.size
    lo_i, hi_i = _order_stat_bounds(n, q, conf_level)
    return QuantileEstimate(
        quantile=q,
        value=float(np.quantile(x, q)),
        ci_low=float(x[lo_i]) if lo_i is not None else -math.inf,
        ci_high=float(x[hi_i]) if hi_i is not None else math.inf,
        conf_level=conf_level,
        n=n,
    )


def quantile_ratio(blue: ArrayLike, green: ArrayLike, q: float, *,
                   conf_level: float = 0.95) -> QuantileRatio:
    """Green/blue ratio of the ``q``-quantile with a Bonferroni interval of level >= conf_level.

    An unbounded or zero denominator yields an infinite side rather than an exception: the
    ratio is then simply not bounded by this much data.
    """
    conf_level = check_probability(conf_level, "conf_level")
    per_arm = 1.0 - (1.0 - conf_level) / 2.0
    b = quantile_ci(blue, q, conf_level=per_arm, arm="blue")
    g = quantile_ci(green, q, conf_level=per_arm, arm="green")

    # Latencies are >= 0, so an unbounded lower end is 0 and an unbounded upper end is inf.
    g_lo, b_lo = max(g.ci_low, 0.0), max(b.ci_low, 0.0)
    lo = _ratio(g_lo, b.ci_high)
    hi = _ratio(g.ci_high, b_lo)
    est = _ratio(g.value, b.value)
    return QuantileRatio(quantile=q, estimate=est, ci_low=lo, ci_high=hi, conf_level=conf_level)


def _ratio(num: float, den: float) -> float:
    """num/den for non-negative numbers with the limits a ratio of latencies needs.

    0/0 is 1 (both arms instantaneous: no regression), x/0 is inf, x/inf is 0.
    """
    if den == 0.0:
        return 1.0 if num == 0.0 else math.inf
    if math.isinf(den):
        return math.inf if math.isinf(num) else 0.0
    return num / den
