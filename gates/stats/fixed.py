"""Fixed-sample baselines: the rules the field uses today, kept for comparison and benchmarks.

* :func:`threshold_test` is the Argo Rollouts / Flagger habit: fail when green's P95 exceeds
  blue's by more than a tolerance. No confidence statement at all: with short windows it rolls
  back healthy releases 6-18% of the time (see ``docs/statistics.md``).
* :func:`bootstrap_ratio_test` puts a percentile-bootstrap interval (Efron & Tibshirani 1993,
  ch. 13) on the P95 ratio: calibrated at a fixed n, but blind until n is large and invalid
  under repeated looks. Resampling works on the *sorted* arms with a fixed seed, so the verdict
  is a deterministic function of the two multisets (arrival order cannot change it).

  Bounded cost: drawing ``n_resamples x n`` indices (2000 x 10^6 = 16 GB) does not scale, and
  a quantile of a resample only depends on two of its order statistics. Resampling index
  ``floor(n U)`` with ``U`` uniform, the resample's ``k``-th smallest value is
  ``sorted[floor(n U_(k))]`` where ``U_(k)``, the ``k``-th of ``n`` uniform order statistics,
  is ``Beta(k, n - k + 1)``, and the next one is ``U_(k)`` plus the minimum of ``n - k``
  uniforms on ``(U_(k), 1)``. Drawing those two per resample is the same bootstrap
  distribution in O(n_resamples) draws. Arms of up to :data:`RESAMPLE_DIRECT_MAX` values per
  resample set are still resampled value by value (in bounded chunks, the same random stream),
  so verdicts at the sizes the field uses are unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gates._validation import as_latencies, check_probability
from gates.verdict import Verdict

__all__ = ["RESAMPLE_DIRECT_MAX", "BootstrapResult", "ThresholdResult", "bootstrap_ratio_test",
           "threshold_test"]

#: Largest ``n_resamples x n`` of one arm resampled value by value; above it the quantile's two
#: order statistics are drawn directly (module docstring).
RESAMPLE_DIRECT_MAX = 2**25
_CHUNK_VALUES = 2**22  # resampled values held at once: 32 MiB of indices


@dataclass(frozen=True)
class ThresholdResult:
    """Outcome of the fixed-threshold rule ``P_q(green) > P_q(blue) * limit``."""

    verdict: Verdict
    blue_quantile: float
    green_quantile: float
    limit: float


@dataclass(frozen=True)
class BootstrapResult:
    """Percentile-bootstrap interval of the green/blue quantile ratio and its verdict."""

    verdict: Verdict
    estimate: float
    ci_low: float
    ci_high: float
    conf_level: float
    limit: float
    n_resamples: int


def threshold_test(blue: ArrayLike, green: ArrayLike, *, quantile: float = 0.95,
                   limit: float = 1.1) -> ThresholdResult:
    """Fail when green's ``quantile`` exceeds blue's times ``limit`` (e.g. 1.1 = +10%)."""
    q = check_probability(quantile, "quantile")
    b = float(np.quantile(as_latencies(blue, arm="blue"), q))
    g = float(np.quantile(as_latencies(green, arm="green"), q))
    verdict = Verdict.FAIL if g > b * limit else Verdict.PASS
    return ThresholdResult(verdict=verdict, blue_quantile=b, green_quantile=g, limit=limit)


def bootstrap_ratio_test(blue: ArrayLike, green: ArrayLike, *, quantile: float = 0.95,
                         limit: float = 1.1, conf_level: float = 0.95,
                         n_resamples: int = 2000, seed: int = 0) -> BootstrapResult:
    """Two-sided percentile-bootstrap CI of ``P_q(green) / P_q(blue)``.

    Verdict: ``fail`` when the whole interval lies above ``limit``, ``pass`` when it lies at
    or below it, ``inconclusive`` otherwise (the data cannot tell yet).
    """
    q = check_probability(quantile, "quantile")
    conf_level = check_probability(conf_level, "conf_level")
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be >= 100, got {n_resamples}")
    b = np.sort(as_latencies(blue, arm="blue"))
    g = np.sort(as_latencies(green, arm="green"))
    rng = np.random.default_rng(seed)
    bq = _resampled_quantiles(b, q, n_resamples, rng)
    gq = _resampled_quantiles(g, q, n_resamples, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(bq > 0, gq / np.where(bq > 0, bq, 1.0), np.inf)
    a = 1.0 - conf_level
    lo, hi = (float(v) for v in np.quantile(ratios, [a / 2, 1 - a / 2]))
    b_point = float(np.quantile(b, q))
    estimate = float(np.quantile(g, q)) / b_point if b_point > 0 else float("inf")
    if lo > limit:
        verdict = Verdict.FAIL
    elif hi <= limit:
        verdict = Verdict.PASS
    else:
        verdict = Verdict.INCONCLUSIVE
    return BootstrapResult(verdict=verdict, estimate=estimate, ci_low=lo, ci_high=hi,
                           conf_level=conf_level, limit=limit, n_resamples=n_resamples)


def _resampled_quantiles(x: NDArray[np.float64], q: float, n_resamples: int,
                         rng: np.random.Generator) -> NDArray[np.float64]:
    """The ``q``-quantile (numpy's linear rule) of each of ``n_resamples`` bootstrap resamples
    of the sorted ``x``, in bounded memory (module docstring)."""
    n = x.size
    if n_resamples * n <= RESAMPLE_DIRECT_MAX:
        rows = max(1, _CHUNK_VALUES // n)
        return np.concatenate([
            np.quantile(x[rng.integers(0, n, (min(rows, n_resamples - i), n))], q, axis=1)
            for i in range(0, n_resamples, rows)])
    h = (n - 1) * q
    k = math.floor(h)  # 0-based: the quantile lies between order statistics k and k + 1
    u = rng.beta(k + 1, n - k, n_resamples)
    low = x[np.minimum((u * n).astype(np.int64), n - 1)]
    if k + 1 >= n or h == k:
        return low
    # The next uniform order statistic: u plus the minimum of n - k - 1 uniforms on (u, 1).
    u_next = u - (1.0 - u) * np.expm1(np.log(rng.random(n_resamples)) / (n - k - 1))
    high = x[np.minimum((u_next * n).astype(np.int64), n - 1)]
    return low + (h - k) * (high - low)
