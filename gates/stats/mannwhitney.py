"""Two-sample Wilcoxon rank-sum (Mann-Whitney U) test, a faithful port of R's ``wilcox.test``.

Why a port and not :func:`scipy.stats.mannwhitneyu`: Kayenta's judge classifies a metric
from R's ``wilcox.test(canary, baseline, conf.int = TRUE)``: the Hodges-Lehmann shift and
its confidence interval, which scipy does not compute, and whose asymptotic form is found
by R's own root finder on a step function. To give the verdict Kayenta would give on the
same data, :func:`mannwhitney` reproduces the two-sample branch of
``stats:::wilcox.test.default`` (R 4.2, unchanged in r-devel) step for step:

* the statistic ``W`` is the rank sum of ``x`` (green) minus ``n_x (n_x + 1) / 2``;
* with ``exact=None`` the exact null distribution is used when both arms have fewer than
  50 observations and there are no ties; the CI is then read off the sorted pairwise
  differences at ``qwilcox`` ranks, and when the discrete distribution cannot reach the
  requested level, R's "Requested conf.level not achievable" adjustment is applied
  (``conf_level`` in the result is the level actually achieved);
* otherwise the normal approximation with tie and continuity corrections is used, and the
  CI bounds and the estimate are roots of R's ``W(d)`` found with R's ``uniroot``
  (Brent's ``zeroin``, ``tol = 1e-4``, ported below so that it probes the same points),
  including R's return of the search endpoints when a bound lies beyond every pairwise
  difference, and its estimate computed without continuity correction.

R stops with an error when both arms are constant and the normal approximation is needed
(every shifted observation ties, so ``W(d)`` is 0/0); :func:`mannwhitney` raises
:class:`ValueError` there. Kayenta's classifier handles that case before testing.

Reference: R sources ``src/library/stats/R/wilcox.test.R``, ``src/nmath/wilcox.c`` and
``src/library/stats/src/zeroin.c``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal, get_args

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr, ndtri

from gates._validation import as_latencies, check_probability

__all__ = ["TOL_ROOT", "Alternative", "MannWhitneyResult", "mannwhitney"]

Alternative = Literal["two-sided", "greater", "less"]

#: R's ``wilcox.test(tol.root = 1e-4)``: absolute tolerance of the asymptotic CI and estimate.
TOL_ROOT: Final = 1e-4
#: R's ``uniroot(maxiter = 1000)``.
_MAXITER: Final = 1000
#: Below this many observations in both arms R uses the exact distribution (``exact = NULL``).
_EXACT_MAX_N: Final = 50
_DBL_EPSILON: Final = float(np.finfo(np.float64).eps)


@dataclass(frozen=True, slots=True)
class MannWhitneyResult:
    """Outcome of :func:`mannwhitney`, field for field what R's ``htest`` object reports.

    Attributes:
        statistic: R's ``W``: rank sum of green minus ``n_green (n_green + 1) / 2``, i.e. the
            number of (green, blue) pairs with green larger, ties counting one half.
        p_value: p-value for ``alternative``.
        estimate: Hodges-Lehmann "difference in location" (green minus blue).
        ci_low: lower confidence bound for the shift (``-inf`` for ``alternative="less"``).
        ci_high: upper confidence bound (``+inf`` for ``alternative="greater"``).
        conf_level: confidence level actually achieved: the requested one, or lower where
            the exact distribution is too coarse (R's "conf.level not achievable").
        alternative: the alternative hypothesis tested.
        exact: whether the exact distribution was used (not merely requested).
        method: R's method string, e.g. ``"Wilcoxon rank sum exact test"``.
    """

    statistic: float
    p_value: float
    estimate: float
    ci_low: float
    ci_high: float
    conf_level: float
    alternative: Alternative
    exact: bool
    method: str


def mannwhitney(
    green: ArrayLike | Iterable[float],
    blue: ArrayLike | Iterable[float],
    *,
    conf_level: float = 0.95,
    alternative: Alternative = "two-sided",
    exact: bool | None = None,
    correct: bool = True,
) -> MannWhitneyResult:
    """R's ``wilcox.test(x = green, y = blue, conf.int = TRUE, ...)``, two-sample branch.

    Args:
        green: latencies of the new deployment (R's ``x``); the shift is green minus blue.
        blue: latencies of the current deployment (R's ``y``).
        conf_level: requested confidence level of the interval, in (0, 1).
        alternative: ``"greater"`` means green tends to be larger than blue.
        exact: ``None`` chooses as R does (exact below 50 per arm); the exact distribution
            is never used with ties, whatever is asked, again as in R.
        correct: continuity correction of the normal approximation.

    Raises:
        LatencyInputError: a value is NaN, infinite or negative.
        NoDataError: an arm is empty.
        ValueError: a bad parameter, or both arms constant where the normal approximation
            is needed (R stops with an error there too).
    """
    x = as_latencies(green, arm="green")
    y = as_latencies(blue, arm="blue")
    level = check_probability(conf_level, "conf_level")
    if alternative not in get_args(Alternative):
        raise ValueError(f"alternative must be one of {get_args(Alternative)}, got {alternative!r}")

    ranks, ties = _average_ranks(np.concatenate((x, y)))
    n_x = float(x.size)
    statistic = float(ranks[: x.size].sum()) - n_x * (n_x + 1) / 2
    use_exact = (x.size < _EXACT_MAX_N and y.size < _EXACT_MAX_N) if exact is None else exact
    if use_exact and ties.size == x.size + y.size:
        return _exact_test(x, y, statistic, level, alternative)
    return _asymptotic_test(x, y, statistic, ties, level, alternative, correct)


# --------------------------------------------------------------------------- ranks


def _average_ranks(values: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """1-based ranks with ties averaged (R's ``rank``), and the size of every tie group."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    sizes = np.diff(np.append(starts, values.size))
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(starts + (sizes + 1) / 2, sizes)
    return ranks, sizes


def _shifted_rank_sum(xs: NDArray[np.float64], ys: NDArray[np.float64],
                      d: float) -> tuple[float, NDArray[np.int64]]:
    """Rank sum of ``xs - d`` in the pooled sample and its tie-group sizes, from sorted arms.

    Equal, value for value, to ``_average_ranks(np.concatenate((x - d, y)))`` summed over
    green, but in O(n) after one sort of each arm instead of a sort per probe of the root
    search (which made 10^6 values per arm take minutes): ``sorted(x) - d`` is still sorted
    (subtracting a constant is monotone in floating point too), the two arms are merged by
    binary search, and a value's average rank is the count of smaller values plus half its
    tie group. Twice every rank is an integer, so the sum is exact in int64, as R's double
    sum of half-integers is below 2^53.
    """
    xd = xs - d
    y_below = np.searchsorted(ys, xd, side="left")
    y_equal = np.searchsorted(ys, xd, side="right") - y_below
    new_x = np.concatenate(([True], xd[1:] != xd[:-1]))
    x_start = np.maximum.accumulate(np.where(new_x, np.arange(xd.size), 0))
    x_size = np.diff(np.append(np.flatnonzero(new_x), xd.size))
    x_equal = np.repeat(x_size, x_size)
    twice = 2 * (x_start + y_below) + x_equal + y_equal + 1
    merged = np.empty(xd.size + ys.size)
    at_x = np.arange(xd.size) + y_below
    merged[at_x] = xd
    in_y = np.ones(merged.size, dtype=bool)
    in_y[at_x] = False
    merged[in_y] = ys
    starts = np.flatnonzero(np.concatenate(([True], merged[1:] != merged[:-1])))
    return float(twice.sum(dtype=np.int64)) / 2, np.diff(np.append(starts, merged.size))


def _tie_sigma(n_x: float, n_y: float, ties: NDArray[np.int64]) -> float:
    """Null standard deviation of ``W`` with R's tie correction, in R's order of operations."""
    t = ties.astype(np.float64)
    tie_term = float(np.sum(t**3 - t))
    n = n_x + n_y
    return math.sqrt((n_x * n_y / 12) * ((n + 1) - tie_term / (n * (n - 1))))


# --------------------------------------------------------------------------- exact branch


@lru_cache(maxsize=128)
def _wilcox_cdf(m: int, n: int) -> NDArray[np.float64]:
    """Cumulative null distribution of ``W`` for arm sizes ``m`` and ``n``.

    Entry ``k`` is R's running sum ``sum(cwilcox(i, m, n) / choose(m + n, n), i = 0..k)``,
    accumulated left to right as ``pwilcox`` and ``qwilcox`` do. The counts come from R's
    recursion ``c(k; i, j) = c(k - j; i - 1, j) + c(k; i, j - 1)`` evaluated one whole
    array of ``k`` at a time: O(m^2 n^2 / 4) additions, a few milliseconds below 50 x 50.
    The distribution is symmetric in ``m`` and ``n``, so the cache key is sorted.
    """
    if m < n:
        return _wilcox_cdf(n, m)
    # prev[j]: counts for (i - 1) observations against j; index k = value of W.
    prev = [np.ones(1) for _ in range(n + 1)]
    for i in range(1, m + 1):
        row = [np.ones(1)]
        for j in range(1, n + 1):
            counts = np.zeros(i * j + 1)
            counts[j:] += prev[j]
            counts[: i * (j - 1) + 1] += row[j - 1]
            row.append(counts)
        prev = row
    cdf = np.cumsum(prev[n] / float(math.comb(m + n, n)))
    cdf.setflags(write=False)
    return cdf


def _pwilcox(q: float, m: int, n: int, *, lower_tail: bool = True) -> float:
    """R's ``pwilcox``: ``P(W <= q)`` (or ``P(W > q)``), summing over the shorter tail."""
    q = math.floor(q + 1e-7)
    mn = m * n
    if q < 0:
        return 0.0 if lower_tail else 1.0
    if q >= mn:
        return 1.0 if lower_tail else 0.0
    cdf = _wilcox_cdf(m, n)
    if q <= mn / 2:
        p = float(cdf[q])
    else:  # P(W > q) = P(W < mn - q) by symmetry: sum the short tail, flip the side
        p = float(cdf[mn - q - 1])
        lower_tail = not lower_tail
    return p if lower_tail else 0.5 - p + 0.5


def _qwilcox(p: float, m: int, n: int) -> int:
    """R's ``qwilcox`` (lower tail), with its ``10 * DBL_EPSILON`` slack on the target."""
    mn = m * n
    if p == 0:
        return 0
    if p == 1:
        return mn
    cdf = _wilcox_cdf(m, n)
    if p <= 0.5:
        return int(np.searchsorted(cdf, p - 10 * _DBL_EPSILON, side="left"))
    q = int(np.searchsorted(cdf, 1 - p + 10 * _DBL_EPSILON, side="right"))
    return mn - q


def _exact_test(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    statistic: float,
    conf_level: float,
    alternative: Alternative,
) -> MannWhitneyResult:
    m, n = x.size, y.size
    mn = m * n
    if alternative == "two-sided":
        if statistic > mn / 2:
            p = _pwilcox(statistic - 1, m, n, lower_tail=False)
        else:
            p = _pwilcox(statistic, m, n)
        p_value = min(2 * p, 1.0)
    elif alternative == "greater":
        p_value = _pwilcox(statistic - 1, m, n, lower_tail=False)
    else:
        p_value = _pwilcox(statistic, m, n)

    # R indexes the sorted differences from 1: diffs[k] in R is diffs[k - 1] here.
    alpha = 1 - conf_level
    diffs = np.sort(np.subtract.outer(x, y), axis=None)
    qu = max(_qwilcox(alpha / 2 if alternative == "two-sided" else alpha, m, n), 1)
    low, high = float(diffs[qu - 1]), float(diffs[mn - qu])
    achieved_alpha = _pwilcox(qu - 1, m, n)
    if alternative == "two-sided":
        achieved_alpha *= 2
    elif alternative == "greater":
        high = math.inf
    else:
        low = -math.inf
    if achieved_alpha - alpha > alpha / 2:
        conf_level = 1 - achieved_alpha

    half = mn // 2
    estimate = float(diffs[half]) if mn % 2 else (float(diffs[half - 1]) + float(diffs[half])) / 2
    return MannWhitneyResult(
        statistic=statistic,
        p_value=p_value,
        estimate=estimate,
        ci_low=low,
        ci_high=high,
        conf_level=conf_level,
        alternative=alternative,
        exact=True,
        method="Wilcoxon rank sum exact test",
    )


# --------------------------------------------------------------------------- asymptotic branch


def _continuity(z: float, alternative: Alternative, correct: bool) -> float:
    if not correct:
        return 0.0
    if alternative == "two-sided":
        return float(np.sign(z)) * 0.5
    return 0.5 if alternative == "greater" else -0.5


# Kept whole: it follows R's wilcox.test normal approximation (ties, continuity correction)
# step by step, which is how it is checked against R.
def _asymptotic_test(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    statistic: float,
    ties: NDArray[np.int64],
    conf_level: float,
    alternative: Alternative,
    correct: bool,
) -> MannWhitneyResult:
    if x.min() == x.max() and y.min() == y.max():
        # Every shifted observation ties: W(d) is 0/0 and R's root search stops with an error.
        raise ValueError(
            "cannot compute confidence interval when all observations are tied "
            f"(green is constant {x[0]:.17g}, blue is constant {y[0]:.17g})"
        )
    n_x, n_y = float(x.size), float(y.size)
    z = statistic - n_x * n_y / 2
    z = (z - _continuity(z, alternative, correct)) / _tie_sigma(n_x, n_y, ties)
    if alternative == "less":
        p_value = float(ndtr(z))
    elif alternative == "greater":
        p_value = float(ndtr(-z))
    else:
        p_value = 2 * min(float(ndtr(z)), float(ndtr(-z)))

    xs, ys = np.sort(x), np.sort(y)

    def w_of(d: float, with_correction: bool) -> float:
        """R's ``W(d)``: the standardized statistic after shifting green by ``d``."""
        rank_sum, ties_d = _shifted_rank_sum(xs, ys, d)
        dz = rank_sum - n_x * (n_x + 1) / 2 - n_x * n_y / 2
        corr = _continuity(dz, alternative, correct and with_correction)
        return (dz - corr) / _tie_sigma(n_x, n_y, ties_d)

    mumin = float(x.min() - y.max())
    mumax = float(x.max() - y.min())
    w_min, w_max = w_of(mumin, True), w_of(mumax, True)

    def root(zq: float) -> float:
        f_lower = w_min - zq
        if f_lower <= 0:  # the bound lies below every pairwise difference
            return mumin
        f_upper = w_max - zq
        if f_upper >= 0:
            return mumax
        return _zeroin(lambda d: w_of(d, True) - zq, mumin, mumax, f_lower, f_upper)

    alpha = 1 - conf_level
    low, high = -math.inf, math.inf
    if alternative == "two-sided":
        low = root(-float(ndtri(alpha / 2)))
        high = root(float(ndtri(alpha / 2)))
    elif alternative == "greater":
        low = root(-float(ndtri(alpha)))
    else:
        high = root(float(ndtri(alpha)))

    # R sets correct <- FALSE before this uniroot: the estimate has no continuity correction.
    estimate = _zeroin(
        lambda d: w_of(d, False), mumin, mumax, w_of(mumin, False), w_of(mumax, False)
    )
    method = "Wilcoxon rank sum test" + (" with continuity correction" if correct else "")
    return MannWhitneyResult(
        statistic=statistic,
        p_value=p_value,
        estimate=estimate,
        ci_low=low,
        ci_high=high,
        conf_level=conf_level,
        alternative=alternative,
        exact=False,
        method=method,
    )


def _zeroin(
    f: Callable[[float], float],
    ax: float,
    bx: float,
    fa: float,
    fb: float,
    tol: float = TOL_ROOT,
    maxit: int = _MAXITER,
) -> float:
    """R's ``R_zeroin2`` (Brent's method as in ``uniroot``), operation for operation.

    Why not :func:`scipy.optimize.brentq`: ``W(d)`` is a step function, so any point
    within ``tol`` of a jump is "a root", and where ``W`` is exactly zero over a whole
    interval (the estimate when half of the pairwise differences are positive) any point of
    that interval is. Which point is returned depends on the exact sequence of probes; only
    the same algorithm, with the same arithmetic, returns the point R returns.
    """
    a, b, c, fc = ax, bx, ax, fa
    if fa == 0.0:
        return a
    if fb == 0.0:
        return b
    for _ in range(maxit + 1):
        prev_step = b - a
        if abs(fc) < abs(fb):  # make b the best approximation
            a, b, c = b, c, b
            fa, fb, fc = fb, fc, fb
        tol_act = 2 * _DBL_EPSILON * abs(b) + tol / 2
        new_step = (c - b) / 2
        if abs(new_step) <= tol_act or fb == 0.0:
            return b
        if abs(prev_step) >= tol_act and abs(fa) > abs(fb):  # try interpolation
            cb = c - b
            if a == c:  # linear
                t1 = fb / fa
                p = cb * t1
                q = 1.0 - t1
            else:  # inverse quadratic
                q = fa / fc
                t1 = fb / fc
                t2 = fb / fa
                p = t2 * (cb * q * (q - t1) - (b - a) * (t1 - 1.0))
                q = (q - 1.0) * (t1 - 1.0) * (t2 - 1.0)
            if p > 0:
                q = -q
            else:
                p = -p
            if p < (0.75 * cb * q - abs(tol_act * q) / 2) and p < abs(prev_step * q / 2):
                new_step = p / q
        if abs(new_step) < tol_act:
            new_step = tol_act if new_step > 0 else -tol_act
        a, fa = b, fb
        b += new_step
        fb = f(b)
        if (fb > 0 and fc > 0) or (fb < 0 and fc < 0):
            c, fc = a, fa
    return b  # R warns "_NOT_ converged" and returns the last iterate; unreachable at tol 1e-4
