"""The anytime-valid sequential judge and the SD latency simulator it is benchmarked on."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from gates._validation import LatencyInputError, NoDataError
from gates.stats import sequential as seq
from gates.stats.sequential import SequentialJudge, sequential_test
from gates.stats.simulate import (
    SCENARIOS,
    exceedance_probability,
    get_scenario,
    model_quantile,
    simulate,
)
from gates.verdict import Verdict


def _run(scenario: str, k: int, seed: int, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    r = simulate(scenario, n, np.random.default_rng(seed), blue_per_green=k)
    return r.green, r.blue


# -- validation ----------------------------------------------------------------------------


def test_observe_rejects_wrong_number_of_blues() -> None:
    judge = SequentialJudge(blue_per_green=3)
    with pytest.raises(LatencyInputError, match="exactly 3 blue"):
        judge.observe(2.5, [2.4, 2.6])
    with pytest.raises(LatencyInputError, match="exactly 3 blue"):
        judge.observe(2.5, [2.4, 2.6, 2.5, 2.7])
    assert judge.decision.slices == 0  # nothing was consumed


@pytest.mark.parametrize(("green", "blue", "arm", "index"), [
    (math.nan, [2.0, 2.0], "green", 1),
    (math.inf, [2.0, 2.0], "green", 1),
    (-0.1, [2.0, 2.0], "green", 1),
    (2.0, [2.0, math.nan], "blue", 3),
    (2.0, [-1.0, 2.0], "blue", 2),
    (2.0, [2.0, math.inf], "blue", 3),
])
def test_observe_rejects_bad_values_with_their_stream_position(
        green: float, blue: list[float], arm: str, index: int) -> None:
    judge = SequentialJudge(blue_per_green=2)
    judge.observe(2.0, [2.1, 1.9])  # one good slice first: positions count from the stream start
    with pytest.raises(LatencyInputError) as err:
        judge.observe(green, blue)
    assert (err.value.arm, err.value.index) == (arm, index)
    assert judge.decision.slices == 1


@pytest.mark.parametrize("kwargs", [
    {"alpha": 0.0}, {"alpha": 1.0}, {"quantile": 1.0}, {"beta": 0.0},
    {"blue_per_green": 0}, {"blue_per_green": 1.5}, {"max_ratio": 0.0},
    {"max_ratio": math.inf}, {"max_slices": 0}, {"futility_ratio": 1.0},
    {"fast_fail_alpha": 0.01}, {"min_history": 0},
])
def test_judge_rejects_out_of_range_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SequentialJudge(**kwargs)  # type: ignore[arg-type]


def test_sequential_test_needs_k_blues_per_green_and_reports_unused_ones() -> None:
    green, blue = _run("null", 4, seed=1, n=50)
    with pytest.raises(ValueError, match="need 200 blue"):
        sequential_test(green, blue[:199], blue_per_green=4)
    extra = np.concatenate([blue, [99.0, 99.0, 99.0]])
    a = sequential_test(green, extra, blue_per_green=4)
    b = sequential_test(green, blue, blue_per_green=4)
    assert a.unused_blue == 3 and b.unused_blue == 0
    assert a.decision == b.decision
    with pytest.raises(NoDataError):
        sequential_test([], blue, blue_per_green=4)


# -- decisions -------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "bound"), [(10, 3), (1, 9)])
def test_cpu_fallback_x15_is_rolled_back_within_the_stated_bound(k: int, bound: int) -> None:
    for seed in range(40):
        green, blue = _run("cpu-x15", k, seed, n=50)
        res = sequential_test(green, blue, blue_per_green=k)
        assert res.decision.verdict is Verdict.FAIL
        assert res.decided_at is not None and res.decided_at <= bound


@pytest.mark.parametrize("k", [1, 2, 10])
def test_fast_fail_guard_fires_at_T_and_only_on_an_unbroken_run(k: int) -> None:
    judge = SequentialJudge(blue_per_green=k)
    t = judge.fast_fail_slices
    assert (k + 1.0) ** -t <= judge.alpha / 5 < (k + 1.0) ** -(t - 1)
    for _ in range(t - 1):
        assert judge.observe(10.0, [1.0] * k).verdict is Verdict.CONTINUE
    d = judge.observe(10.0, [1.0] * k)
    assert (d.verdict, d.slices) == (Verdict.FAIL, t)
    assert "slowest" in d.reason
    # One slice where green is not the slowest disarms the guard for good.
    judge = SequentialJudge(blue_per_green=k)
    judge.observe(1.0, [2.0] * k)
    for _ in range(t):
        judge.observe(10.0, [1.0] * k)
    assert "slowest" not in judge.decision.reason


def test_decisions_are_sticky() -> None:
    green, blue = _run("cpu-x15", 10, seed=3, n=20)
    judge = SequentialJudge(blue_per_green=10)
    first = None
    for i in range(20):
        d = judge.observe(green[i], blue[10 * i:10 * i + 10])
        if d.decided and first is None:
            first = d
    assert first is not None and first.verdict is Verdict.FAIL
    assert judge.decision is first
    # Healthy data afterwards changes nothing: the slice is ignored.
    assert judge.observe(2.5, [2.5] * 10) is first
    assert judge.observe_many([2.5, 2.5], [2.5] * 20) is first


def test_budget_gives_inconclusive_and_stays_there() -> None:
    # Five K=1 slices cannot decide: the centre part gains at most x2 a slice (2^5 < 1/alpha),
    # the guard needs 9 slices and the tail part needs 20 blues of history.
    green, blue = _run("null", 1, seed=4, n=10)
    judge = SequentialJudge(blue_per_green=1, max_slices=5)
    for i in range(4):
        assert judge.observe(green[i], [blue[i]]).verdict is Verdict.CONTINUE
    d = judge.observe(green[4], [blue[4]])
    assert (d.verdict, d.slices) == (Verdict.INCONCLUSIVE, 5)
    assert "budget" in d.reason
    assert judge.observe(green[5], [blue[5]]) is d


def test_data_running_out_leaves_continue_without_decided_at() -> None:
    green, blue = _run("null", 1, seed=5, n=6)
    res = sequential_test(green, blue)
    assert res.decision.verdict is Verdict.CONTINUE
    assert res.decided_at is None and res.decision.slices == 6
    assert res.e_values.shape == (6,) and res.futility_e_values.shape == (6,)


def test_trajectory_ends_at_the_decision() -> None:
    green, blue = _run("median+10%", 10, seed=6)
    res = sequential_test(green, blue, blue_per_green=10)
    assert res.decision.verdict is Verdict.FAIL
    assert res.decided_at == res.e_values.size
    assert res.e_values[-1] == pytest.approx(res.decision.e_value)
    assert res.e_values[-1] >= res.decision.threshold
    assert np.all(res.e_values[:-1] < res.decision.threshold)
    summary = res.summary()
    assert summary["verdict"] == "fail" and summary["decided_at"] == res.decided_at


def test_e_values_follow_the_documented_formulas() -> None:
    # K = 1, min_history = 1: slice 1 has no tau; slice 2 uses tau = blue of slice 1.
    judge = SequentialJudge(blue_per_green=1, min_history=1)
    d1 = judge.observe(3.0, [2.0])  # green slower: rank R = 1
    centre1 = np.mean([2 * (1 - 2.0**-g) for g in seq.CENTRE_GAMMAS])
    assert d1.e_value == pytest.approx(seq.TAIL_WEIGHT + (1 - seq.TAIL_WEIGHT) * centre1)
    assert d1.futility_e == 1.0
    d2 = judge.observe(2.5, [1.0])  # tau = 2.0: green exceeds, blue does not: S = 1, Y = 1
    tail = np.mean([2 * r / (r + 1) for r in seq.TAIL_RHOS])
    centre2 = np.mean([(2 * (1 - 2.0**-g)) ** 2 for g in seq.CENTRE_GAMMAS])
    assert d2.e_value == pytest.approx(seq.TAIL_WEIGHT * tail + (1 - seq.TAIL_WEIGHT) * centre2)
    rho_f = judge.futility_ratio
    assert d2.futility_e == pytest.approx((rho_f + 1) / (2 * rho_f))
    assert (d2.blue_quantile, d2.informative, d2.exceedances, d2.expected_exceedances) == (
        2.0, 1, 1, 0.5)


def test_blue_quantile_uses_past_blues_only() -> None:
    green, blue = _run("null", 3, seed=7, n=40)
    judge = SequentialJudge(blue_per_green=3)
    for i in range(40):
        d = judge.observe(green[i], blue[3 * i:3 * i + 3])
        past = blue[:3 * i]
        if past.size >= judge.min_history:
            assert d.blue_quantile == np.quantile(past, 0.95, method="inverted_cdf")
        else:
            assert math.isnan(d.blue_quantile)


def test_blue_quantile_follows_the_latest_window_of_past_blues() -> None:
    rng = np.random.default_rng(11)
    blue = rng.lognormal(0, 0.2, 300)
    judge = SequentialJudge(blue_per_green=1, tau_window=50)
    checked = 0
    for i in range(300):
        d = judge.observe(blue[299 - i], [blue[i]])  # green drawn alike: rarely decides early
        if d.decided:
            break
        past = blue[max(0, i - 50):i]
        if i >= judge.min_history:
            assert d.blue_quantile == np.quantile(past, 0.95, method="inverted_cdf")
            checked += 1
    assert checked > 50  # well past the first full window
    with pytest.raises(ValueError, match="tau_window"):
        SequentialJudge(tau_window=5)  # fewer than min_history (20 at P95)


def test_a_blue_that_speeds_up_does_not_stall_promotion() -> None:
    """Blue slow at first, then 33% faster (a start-up phase, a load that eases); green
    healthy. With tau from every past blue, blue rarely exceeds it afterwards, mixed slices
    dry up and most runs end undecided; the window follows blue and promotes them all."""
    windowed, everything = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        t = np.arange(800)
        level = np.where(t < 300, 1.5 - 0.5 * t / 300, 1.0)
        blue = level * rng.lognormal(0, 0.15, 800)
        green = 0.7 * level * rng.lognormal(0, 0.15, 800)
        for out, options in ((windowed, {}), (everything, {"tau_window": None})):
            res = sequential_test(green, blue, max_ratio=1.1, max_slices=800, **options)
            out.append(res.decision.verdict)
    assert windowed.count(Verdict.PASS) == 20
    assert everything.count(Verdict.INCONCLUSIVE) >= 15


def test_margin_tolerates_a_slowdown_inside_it_and_catches_one_beyond() -> None:
    rng = np.random.default_rng(8)
    within = beyond = 0
    for _ in range(30):
        r = simulate("null", 600, rng, blue_per_green=10)
        within += sequential_test(r.green * 1.05, r.blue, blue_per_green=10,
                                  max_ratio=1.1).decision.verdict is Verdict.FAIL
        beyond += sequential_test(r.green * 1.3, r.blue, blue_per_green=10,
                                  max_ratio=1.1).decision.verdict is Verdict.FAIL
    assert within == 0
    assert beyond == 30


# -- error rates (compact Monte Carlo) -------------------------------------------------------


@pytest.mark.parametrize(("scenario", "k", "alpha"), [
    ("null", 10, 0.01), ("null", 1, 0.01), ("drift+10%", 10, 0.01), ("drift+10%", 1, 0.01),
    ("null", 10, 0.1), ("drift+10%", 1, 0.1)])
def test_false_rollbacks_stay_within_a_binomial_bound_for_alpha(scenario: str, k: int,
                                                                 alpha: float) -> None:
    reps = 200
    budget = 1500 if k == 10 else 3000
    fails = 0
    for seed in range(reps):
        green, blue = _run(scenario, k, seed + 1000 * k, n=budget)
        res = sequential_test(green, blue, blue_per_green=k, alpha=alpha, max_slices=budget)
        fails += res.decision.verdict is Verdict.FAIL
    # If P(false rollback) <= alpha, exceeding this count has probability < 0.001.
    assert fails <= stats.binom.ppf(0.999, reps, alpha)


def test_median_shift_is_caught_quickly() -> None:
    slices = []
    for seed in range(100):
        green, blue = _run("median+10%", 10, seed, n=400)
        res = sequential_test(green, blue, blue_per_green=10)
        assert res.decision.verdict is Verdict.FAIL
        slices.append(res.decision.slices)
    assert np.median(slices) <= 40


# -- properties ------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.floats(1e-3, 1e3), k=st.sampled_from([1, 4, 10]),
       scenario=st.sampled_from(["null", "median+10%", "bimodal"]))
def test_scaling_all_latencies_changes_nothing(seed: int, c: float, k: int,
                                               scenario: str) -> None:
    green, blue = _run(scenario, k, seed, n=300)
    a = sequential_test(green, blue, blue_per_green=k)
    b = sequential_test(green * c, blue * c, blue_per_green=k)
    assert (a.decision.verdict, a.decision.slices) == (b.decision.verdict, b.decision.slices)
    np.testing.assert_allclose(a.e_values, b.e_values, rtol=1e-9)
    np.testing.assert_allclose(a.futility_e_values, b.futility_e_values, rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.sampled_from([1, 3, 10]),
       scenario=st.sampled_from(["null", "tail+30%", "cpu-x15"]),
       cuts=st.lists(st.integers(1, 250), max_size=4))
def test_streaming_chunked_and_batch_agree(seed: int, k: int, scenario: str,
                                           cuts: list[int]) -> None:
    green, blue = _run(scenario, k, seed, n=250)
    batch = sequential_test(green, blue, blue_per_green=k).decision
    one = SequentialJudge(blue_per_green=k)
    for i in range(green.size):
        one.observe(green[i], blue[k * i:k * (i + 1)])
    many = SequentialJudge(blue_per_green=k)
    edges = [0, *sorted(set(cuts)), green.size]
    for lo, hi in itertools.pairwise(edges):
        many.observe_many(green[lo:hi], blue[k * lo:k * hi])
    for d in (one.decision, many.decision):
        assert (d.verdict, d.slices, d.exceedances) == (batch.verdict, batch.slices,
                                                         batch.exceedances)
        assert d.e_value == pytest.approx(batch.e_value, rel=1e-9)
        assert d.futility_e == pytest.approx(batch.futility_e, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.sampled_from([2, 10]))
def test_order_of_blues_within_a_slice_does_not_matter(seed: int, k: int) -> None:
    green, blue = _run("tail+30%", k, seed, n=300)
    shuffled = np.random.default_rng(seed).permuted(blue.reshape(-1, k), axis=1).reshape(-1)
    a = sequential_test(green, blue, blue_per_green=k)
    b = sequential_test(green, shuffled, blue_per_green=k)
    # NaN-aware: a fast-fail before blue's quantile exists leaves blue_quantile NaN in both.
    np.testing.assert_equal(dataclasses.asdict(a.decision), dataclasses.asdict(b.decision))


# -- the simulator ---------------------------------------------------------------------------


def test_blue_model_matches_the_anchored_quantiles() -> None:
    assert model_quantile(0.5) == pytest.approx(2.51, abs=0.01)
    assert model_quantile(0.95) == pytest.approx(2.98, abs=0.01)
    assert model_quantile(0.99) == pytest.approx(4.94, abs=0.01)


@pytest.mark.parametrize(("name", "p1"), [
    ("null", 0.05), ("median+10%", 0.19), ("tail+30%", 0.10), ("tail+15%", 0.08),
    ("cpu-x15", 1.0), ("bimodal", 0.24)])
def test_exceedance_probabilities_match_the_notes_and_the_sampler(name: str, p1: float) -> None:
    assert exceedance_probability(name) == pytest.approx(p1, abs=0.006)
    green = simulate(name, 100_000, np.random.default_rng(9)).green
    assert np.mean(green > model_quantile(0.95)) == pytest.approx(exceedance_probability(name),
                                                                  abs=0.005)


def test_tail_scenarios_move_p95_but_not_the_median() -> None:
    blue_p95 = model_quantile(0.95)
    for name, ratio in (("tail+30%", 1.30), ("tail+15%", 1.15)):
        g = simulate(name, 200_000, np.random.default_rng(10)).green
        assert np.quantile(g, 0.95) / blue_p95 == pytest.approx(ratio, abs=0.03)
        assert np.median(g) / model_quantile(0.5) == pytest.approx(1.0, abs=0.02)


def test_simulation_is_deterministic_and_drift_is_common_to_both_arms() -> None:
    a = simulate("null", 300, np.random.default_rng(11), blue_per_green=10, ramp_slices=100)
    b = simulate("null", 300, np.random.default_rng(11), blue_per_green=10, ramp_slices=100)
    d = simulate("drift+10%", 300, np.random.default_rng(11), blue_per_green=10, ramp_slices=100)
    np.testing.assert_array_equal(a.green, b.green)
    np.testing.assert_array_equal(a.blue, b.blue)
    load = d.green / a.green
    np.testing.assert_allclose(d.blue.reshape(300, 10) / a.blue.reshape(300, 10),
                               np.repeat(load[:, None], 10, axis=1))
    assert load[0] == pytest.approx(1.0) and load[-1] == pytest.approx(1.1)
    assert np.all(np.diff(load) >= 0)
    assert a.blue.shape == (3000,) and a.green.shape == (300,)


def test_scenarios_are_named_uniquely_and_looked_up() -> None:
    names = [s.name for s in SCENARIOS]
    assert len(set(names)) == len(names)
    assert get_scenario("tail+30%").p_spike == pytest.approx(0.123)
    with pytest.raises(KeyError, match="known"):
        get_scenario("nope")
