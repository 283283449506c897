"""Order-statistic quantile intervals: coverage, edge cases, the ratio interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gates._validation import LatencyInputError, NoDataError
from gates.stats.quantiles import quantile_ci, quantile_ratio


@pytest.mark.parametrize(("q", "n"), [(0.5, 30), (0.95, 200), (0.99, 600)])
def test_quantile_ci_covers_true_quantile_at_nominal_rate(q: float, n: int) -> None:
    rng = np.random.default_rng(1)
    true = -math.log(1 - q)  # Exp(1) quantile
    reps = 1500
    hits = 0
    for _ in range(reps):
        r = quantile_ci(rng.exponential(1.0, n), q, conf_level=0.9)
        hits += r.ci_low <= true <= r.ci_high
    # Exact intervals are conservative: coverage >= 0.9 up to Monte Carlo error (3 sd).
    assert hits / reps >= 0.9 - 3 * math.sqrt(0.09 / reps)


def test_quantile_ci_is_unbounded_when_sample_too_small() -> None:
    r = quantile_ci(np.linspace(1, 2, 20), 0.99)
    assert math.isinf(r.ci_high)
    assert not r.bounded
    assert r.ci_low <= r.value


def test_quantile_ci_point_estimate_matches_numpy() -> None:
    x = np.random.default_rng(2).lognormal(1, 0.2, 101)
    r = quantile_ci(x, 0.95)
    assert r.value == pytest.approx(np.quantile(x, 0.95))
    assert r.ci_low <= r.value <= r.ci_high
    assert r.n == 101


@pytest.mark.parametrize("bad", [[1.0, float("nan")], [1.0, -0.5], [float("inf")]])
def test_invalid_latencies_are_rejected_with_position(bad: list[float]) -> None:
    with pytest.raises(LatencyInputError) as e:
        quantile_ci(bad, 0.95, arm="green")
    assert e.value.arm == "green"
    assert e.value.index == len(bad) - 1


def test_empty_sample_is_nodata() -> None:
    with pytest.raises(NoDataError):
        quantile_ci([], 0.5)


@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, 1.5])
def test_quantile_outside_open_unit_interval_is_rejected(q: float) -> None:
    with pytest.raises(ValueError, match="quantile"):
        quantile_ci([1.0, 2.0], q)


def test_ratio_interval_contains_the_true_ratio() -> None:
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(400):
        b = rng.lognormal(0, 0.3, 300)
        g = rng.lognormal(0, 0.3, 300) * 1.3
        r = quantile_ratio(b, g, 0.95, conf_level=0.9)
        hits += r.ci_low <= 1.3 <= r.ci_high
    assert hits / 400 >= 0.88


def test_ratio_of_zero_latencies_is_one() -> None:
    r = quantile_ratio(np.zeros(50), np.zeros(50), 0.5)
    assert r.estimate == 1.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.01, 100), min_size=5, max_size=200), st.floats(0.1, 10))
def test_ratio_is_scale_invariant(xs: list[float], c: float) -> None:
    x = np.asarray(xs)
    a = quantile_ratio(x, x * 1.2, 0.9)
    b = quantile_ratio(x * c, x * 1.2 * c, 0.9)
    assert a.estimate == pytest.approx(b.estimate, rel=1e-9)
    for u, v in ((a.ci_low, b.ci_low), (a.ci_high, b.ci_high)):
        assert (math.isinf(u) and math.isinf(v)) or u == pytest.approx(v, rel=1e-9)
