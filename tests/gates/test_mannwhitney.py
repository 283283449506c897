"""gates.stats.mannwhitney against R's own wilcox.test, an enumeration oracle and invariances.

Reference values: tests/data/r_wilcox/reference.json, made by make_reference.R next to it
(R is not needed to run these tests).

Tolerances. W and the p-value: 1e-6 relative. Where R is exact (small, no ties) the
estimate and CI are order statistics of the pairwise differences: 1e-6 relative. Where R
uses the normal approximation they are roots of a step function found by ``uniroot`` with
``tol.root = 1e-4``: R only promises a point within ``2 * tol_act = 1e-4 + 4 eps |root|``
(absolute, in seconds) of where ``W(d) - zq`` changes sign, so that is the tolerance against
R's value; and, independently of R, :func:`_w_naive` (a pair-counting rewrite of R's ``W``)
checks that each returned point really is such a root within that distance.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.special import ndtri

from gates._validation import LatencyInputError, NoDataError
from gates.stats.mannwhitney import TOL_ROOT, MannWhitneyResult, _pwilcox, _qwilcox, mannwhitney

DATA = Path(__file__).resolve().parents[1] / "data"

REFERENCE = json.loads((DATA / "r_wilcox/reference.json").read_text())
CASES = REFERENCE["cases"]
EPS = float(np.finfo(np.float64).eps)


def _num(v: float | str) -> float:
    return {"Inf": math.inf, "-Inf": -math.inf}[v] if isinstance(v, str) else float(v)


def _run(case: dict[str, Any]) -> MannWhitneyResult:
    return mannwhitney(
        case["green"],
        case["blue"],
        conf_level=case["conf_level"],
        alternative=case["alternative"],
        exact=case["exact"],
        correct=case["correct"],
    )


def _root_tol(value: float) -> float:
    """R's uniroot guarantee: within 2 * tol_act of a sign change (zeroin.c)."""
    return TOL_ROOT + 4 * EPS * abs(value)


def _w_naive(x: np.ndarray, y: np.ndarray, d: float, alternative: str, correct: bool) -> float:
    """R's W(d) rewritten from pair counts instead of ranks: an independent oracle."""
    xs = x - d
    u = float((xs[:, None] > y).sum() + 0.5 * (xs[:, None] == y).sum())
    nx, ny = x.size, y.size
    dz = u - nx * ny / 2
    _, t = np.unique(np.concatenate((xs, y)), return_counts=True)
    n = nx + ny
    sigma = math.sqrt(
        nx * ny / 12 * ((n + 1) - float(np.sum(t.astype(float) ** 3 - t)) / (n * (n - 1)))
    )
    corr = {"two-sided": 0.5 * np.sign(dz), "greater": 0.5, "less": -0.5}[alternative]
    return (dz - (corr if correct else 0.0)) / sigma


def _assert_is_root(
    x: np.ndarray, y: np.ndarray, r: float, zq: float, alternative: str, correct: bool
) -> None:
    """``r`` is where R's W(d) - zq changes sign (non-increasing in d), up to R's tolerance,
    or the endpoint R returns when the bound lies beyond every pairwise difference."""
    mumin, mumax = float(x.min() - y.max()), float(x.max() - y.min())
    if r == mumin and _w_naive(x, y, mumin, alternative, correct) <= zq:
        return
    if r == mumax and _w_naive(x, y, mumax, alternative, correct) >= zq:
        return
    delta = _root_tol(r) + 1e-12
    assert _w_naive(x, y, r - delta, alternative, correct) >= zq
    assert _w_naive(x, y, r + delta, alternative, correct) <= zq


def _assert_asymptotic_roots(
    x: np.ndarray, y: np.ndarray, res: MannWhitneyResult, correct: bool
) -> None:
    alpha = 1 - res.conf_level
    alt = res.alternative
    _assert_is_root(x, y, res.estimate, 0.0, alt, False)  # R: no correction for the estimate
    if alt == "two-sided":
        _assert_is_root(x, y, res.ci_low, -float(ndtri(alpha / 2)), alt, correct)
        _assert_is_root(x, y, res.ci_high, float(ndtri(alpha / 2)), alt, correct)
    elif alt == "greater":
        _assert_is_root(x, y, res.ci_low, -float(ndtri(alpha)), alt, correct)
    else:
        _assert_is_root(x, y, res.ci_high, float(ndtri(alpha)), alt, correct)


# --------------------------------------------------------------------------- R reference


def test_reference_covers_every_branch() -> None:
    methods = {c["r"]["method"] for c in CASES}
    assert methods == {
        "Wilcoxon rank sum exact test",
        "Wilcoxon rank sum test with continuity correction",
        "Wilcoxon rank sum test",
    }
    assert {c["alternative"] for c in CASES} == {"two-sided", "greater", "less"}
    assert {c["conf_level"] for c in CASES} >= {0.95, 0.98}
    assert any(c["r"]["conf_level"] < c["conf_level"] for c in CASES)  # not achievable
    assert any(_num(c["r"]["conf_int"][0]) == min(c["green"]) - max(c["blue"]) for c in CASES)
    assert max(len(c["green"]) for c in CASES) >= 300
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_r(case: dict[str, Any]) -> None:
    r = case["r"]
    res = _run(case)
    assert res.method == r["method"]
    assert res.exact == ("exact" in r["method"])
    assert res.alternative == case["alternative"]
    assert res.statistic == pytest.approx(r["statistic"], rel=1e-6)
    assert res.p_value == pytest.approx(r["p_value"], rel=1e-6)
    assert res.conf_level == pytest.approx(r["conf_level"], rel=1e-12, abs=1e-15)
    r_low, r_high = (_num(v) for v in r["conf_int"])
    got = (res.estimate, res.ci_low, res.ci_high)
    want = (r["estimate"], r_low, r_high)
    for g, w in zip(got, want, strict=True):
        if math.isinf(w):
            assert g == w
        elif res.exact:
            assert g == pytest.approx(w, rel=1e-6, abs=1e-12)
        else:
            assert abs(g - w) <= _root_tol(w)


@pytest.mark.parametrize(
    "case", [c for c in CASES if "exact" not in c["r"]["method"]], ids=lambda c: c["name"]
)
def test_asymptotic_bounds_and_estimate_are_roots(case: dict[str, Any]) -> None:
    x, y = np.asarray(case["green"]), np.asarray(case["blue"])
    _assert_asymptotic_roots(x, y, _run(case), case["correct"])


# --------------------------------------------------------------------------- exact distribution


@pytest.mark.parametrize(("m", "n"), [(1, 1), (1, 4), (2, 3), (3, 3), (4, 6), (6, 4), (5, 7)])
def test_exact_distribution_matches_enumeration(m: int, n: int) -> None:
    # W = rank sum of x minus m(m+1)/2 over all equally likely rank sets of x.
    ws = [sum(c) - m * (m + 1) // 2 for c in itertools.combinations(range(1, m + n + 1), m)]
    total = len(ws)
    for q in range(-1, m * n + 1):
        below = sum(w <= q for w in ws) / total
        assert _pwilcox(q, m, n) == pytest.approx(below, abs=1e-14)
        assert _pwilcox(q, m, n, lower_tail=False) == pytest.approx(1 - below, abs=1e-14)
    for p in np.linspace(0.001, 0.999, 37):
        q = _qwilcox(float(p), m, n)
        assert sum(w <= q for w in ws) / total >= p - 1e-12  # smallest such q
        assert q == 0 or sum(w <= q - 1 for w in ws) / total < p


def test_exact_requested_with_ties_falls_back_like_r() -> None:
    res = mannwhitney([1.0, 2.0, 2.0], [2.0, 3.0, 4.0], exact=True)
    assert not res.exact
    assert res.method == "Wilcoxon rank sum test with continuity correction"


def test_exact_for_large_samples_when_requested() -> None:
    rng = np.random.default_rng(7)
    g, b = rng.lognormal(0.1, 0.2, 60), rng.lognormal(0.0, 0.2, 55)
    exact = mannwhitney(g, b, exact=True)
    approx = mannwhitney(g, b)
    assert exact.exact and not approx.exact
    assert exact.statistic == approx.statistic
    assert exact.p_value == pytest.approx(approx.p_value, rel=0.05)  # same test, two methods
    diffs = np.sort(np.subtract.outer(g, b), axis=None)
    assert exact.estimate == pytest.approx(float(np.median(diffs)), rel=1e-12)


# --------------------------------------------------------------------------- edge cases, input


def test_both_arms_constant_is_an_error_as_in_r() -> None:
    with pytest.raises(ValueError, match="all observations are tied"):
        mannwhitney([2.0, 2.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="all observations are tied"):
        mannwhitney([2.0], [1.0], exact=False)
    assert mannwhitney([2.0], [1.0]).estimate == 1.0  # exact branch: one difference


def test_rejects_bad_input() -> None:
    with pytest.raises(LatencyInputError) as err:
        mannwhitney([1.0, float("nan")], [1.0])
    assert (err.value.arm, err.value.index) == ("green", 1)
    with pytest.raises(LatencyInputError):
        mannwhitney([1.0], [-0.5])
    with pytest.raises(NoDataError):
        mannwhitney([1.0], [])
    with pytest.raises(ValueError, match="alternative"):
        mannwhitney([1.0], [2.0], alternative="two.sided")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="conf_level"):
        mannwhitney([1.0], [2.0], conf_level=1.0)


# --------------------------------------------------------------------------- properties

# No ties, both arms < 50: R's exact branch, where every invariance holds exactly.
distinct = st.lists(st.integers(1, 10**6), min_size=2, max_size=40, unique=True).flatmap(
    lambda v: st.tuples(st.just(v), st.integers(1, len(v) - 1))
)
# Ties (values on a coarse millisecond grid): the normal approximation and root finding.
tied = st.tuples(
    st.lists(st.integers(500, 540), min_size=1, max_size=60),
    st.lists(st.integers(500, 540), min_size=1, max_size=60),
)
alternatives = st.sampled_from(["two-sided", "greater", "less"])


@settings(max_examples=60, deadline=None)
@given(distinct, alternatives, st.randoms(use_true_random=False))
def test_permutation_invariance_exact(
    data: tuple[list[int], int], alternative: Any, rnd: Any
) -> None:
    values, m = data
    g, b = [v / 1000 for v in values[:m]], [v / 1000 for v in values[m:]]
    res = mannwhitney(g, b, alternative=alternative)
    assert res.exact
    rnd.shuffle(g)
    rnd.shuffle(b)
    assert mannwhitney(g, b, alternative=alternative) == res


@settings(max_examples=60, deadline=None)
@given(tied, alternatives, st.randoms(use_true_random=False))
def test_permutation_invariance_asymptotic(
    data: tuple[list[int], list[int]], alternative: Any, rnd: Any
) -> None:
    g, b = ([v / 1000 for v in arm] for arm in data)
    assume(len(set(g)) > 1 or len(set(b)) > 1)
    res = mannwhitney(g, b, alternative=alternative, exact=False)
    rnd.shuffle(g)
    rnd.shuffle(b)
    assert mannwhitney(g, b, alternative=alternative, exact=False) == res


@settings(max_examples=60, deadline=None)
@given(distinct, st.integers(-8, 8))
def test_scaling_exact(data: tuple[list[int], int], k: int) -> None:
    values, m = data
    c = 2.0**k  # a power of two scales every difference without rounding
    g, b = np.asarray(values[:m]) / 1000, np.asarray(values[m:]) / 1000
    res, scaled = mannwhitney(g, b), mannwhitney(c * g, c * b)
    assert (scaled.statistic, scaled.p_value) == (res.statistic, res.p_value)
    assert (scaled.estimate, scaled.ci_low, scaled.ci_high) == (
        c * res.estimate,
        c * res.ci_low,
        c * res.ci_high,
    )


@settings(max_examples=40, deadline=None)
@given(tied, st.integers(-6, 6))
def test_scaling_asymptotic(data: tuple[list[int], list[int]], k: int) -> None:
    c = 2.0**k
    g, b = (np.asarray(arm) / 1000 for arm in data)
    assume(len(set(data[0])) > 1 or len(set(data[1])) > 1)
    res, scaled = mannwhitney(g, b, exact=False), mannwhitney(c * g, c * b, exact=False)
    assert (scaled.statistic, scaled.p_value) == (res.statistic, res.p_value)
    # The roots move with the data; R's tolerance is absolute, so each is checked on its scale.
    _assert_asymptotic_roots(c * g, c * b, scaled, True)
    for got, want in ((scaled.ci_low, res.ci_low), (scaled.ci_high, res.ci_high)):
        assert abs(got - c * want) <= _root_tol(got) + c * _root_tol(want)


@settings(max_examples=60, deadline=None)
@given(distinct)
def test_swapping_arms_negates_shift_exact(data: tuple[list[int], int]) -> None:
    values, m = data
    g, b = [v / 1000 for v in values[:m]], [v / 1000 for v in values[m:]]
    res, swapped = mannwhitney(g, b), mannwhitney(b, g)
    assert swapped.statistic == len(g) * len(b) - res.statistic
    assert swapped.p_value == pytest.approx(res.p_value, rel=1e-12)  # R sums the other tail
    assert (swapped.estimate, swapped.ci_low, swapped.ci_high) == (
        -res.estimate,
        -res.ci_high,
        -res.ci_low,
    )


@settings(max_examples=40, deadline=None)
@given(tied)
def test_swapping_arms_negates_shift_asymptotic(data: tuple[list[int], list[int]]) -> None:
    g, b = (np.asarray(arm) / 1000 for arm in data)
    assume(len(set(data[0])) > 1 or len(set(data[1])) > 1)
    res, swapped = mannwhitney(g, b, exact=False), mannwhitney(b, g, exact=False)
    assert swapped.statistic == g.size * b.size - res.statistic
    assert swapped.p_value == pytest.approx(res.p_value, rel=1e-12)
    _assert_asymptotic_roots(b, g, swapped, True)
    assert abs(swapped.ci_low + res.ci_high) <= 2 * _root_tol(res.ci_high)
    assert abs(swapped.ci_high + res.ci_low) <= 2 * _root_tol(res.ci_low)
