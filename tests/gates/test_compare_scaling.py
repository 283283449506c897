"""Fixed-n methods that scale: same answers as before on small n, bounded cost at 10^6.

The references below are the previous implementations' own computations (the rank sum by a
full sort of the pooled, shifted sample; the bootstrap by drawing every resampled value), run
on the same data: the fast paths must give bit-identical results where the old ones were
affordable, and the new order-statistic bootstrap the same distribution where they were not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ks_2samp

from gates.compare import METHODS, compare
from gates.stats import fixed
from gates.stats.mannwhitney import _average_ranks, _shifted_rank_sum

ROOT = Path(__file__).resolve().parents[2]
# Few distinct values: ties within and across arms, and shifts that create new ones.
_values = st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.3, 0.5, 1.0, 1.5, 2.0, 2.25]),
                   min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(_values, _values, st.sampled_from([0.0, 0.05, 0.25, -0.5, 1e-17, 1.75]))
def test_shifted_rank_sum_is_the_full_sort_rank_sum(x: list[float], y: list[float],
                                                    d: float) -> None:
    gx, gy = np.array(x), np.array(y)
    ranks, ties = _average_ranks(np.concatenate((gx - d, gy)))
    rank_sum, ties_fast = _shifted_rank_sum(np.sort(gx), np.sort(gy), d)
    assert rank_sum == float(ranks[:gx.size].sum())
    assert np.array_equal(ties, ties_fast)


def _old_bootstrap_quantiles(x: np.ndarray, q: float, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(np.quantile(x[rng.integers(0, x.size, (2000, x.size))], q, axis=1))


@pytest.mark.parametrize("n", [3, 40, 1000, 16000])
def test_bootstrap_resamples_the_same_values_up_to_the_direct_bound(n: int) -> None:
    data = np.random.default_rng(n)
    b, g = np.sort(data.lognormal(0, 0.3, n)), np.sort(data.lognormal(0, 0.3, n + 5))
    old, new = np.random.default_rng(0), np.random.default_rng(0)
    for arm in (b, g):  # blue's resamples first, then green's, from one stream
        assert np.array_equal(_old_bootstrap_quantiles(arm, 0.95, old),
                              fixed._resampled_quantiles(arm, 0.95, 2000, new))


def test_order_statistic_bootstrap_has_the_resampling_distribution(
        monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.sort(np.random.default_rng(7).lognormal(0, 0.3, 1500))
    direct = np.quantile(x[np.random.default_rng(1).integers(0, x.size, (8000, x.size))], 0.95,
                         axis=1)
    monkeypatch.setattr(fixed, "RESAMPLE_DIRECT_MAX", 0)
    drawn = fixed._resampled_quantiles(x, 0.95, 8000, np.random.default_rng(2))
    assert ks_2samp(direct, drawn).pvalue > 1e-3
    assert abs(np.median(direct) - np.median(drawn)) < 0.01


@pytest.mark.parametrize("method", [m for m in METHODS if m != "kayenta"])
def test_small_n_verdicts_unchanged_against_a_slower_green(method: str) -> None:
    rng = np.random.default_rng(11)
    blue = rng.lognormal(0, 0.2, 400)
    for factor, expect in ((1.0, {"pass", "inconclusive"}), (1.6, {"fail"})):
        green = rng.lognormal(0, 0.2, 400) * factor
        assert compare(blue, green, method=method, max_ratio=1.1).verdict.value in expect


@pytest.mark.slow
def test_every_method_answers_a_million_values_within_the_bounds() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from compare_scaling import measure
    finally:
        sys.path.remove(str(ROOT / "bench"))
    for method in METHODS:
        row = measure(method, 10**6, timeout_s=90)
        assert "error" not in row, json.dumps(row)
        assert float(str(row["s"])) < 60 and int(str(row["peak_kib"])) < 2**20, row
