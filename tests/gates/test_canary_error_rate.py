"""The error-rate gate: calibrated at any stopping time, quick on a failing green."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from gates.error_rate import ErrorRateGateSpec, ErrorRateJudge, evaluate_error_rate
from gates.verdict import Verdict

ROOT = Path(__file__).resolve().parents[2]


def _first_verdicts(rate: float, max_rate: float, runs: int, n: int, seed: int) -> list[Verdict]:
    """For each simulated run: FAIL if the gate ever failed within n requests, else the end."""
    rng = np.random.default_rng(seed)
    out = []
    for fails in rng.random((runs, n)) < rate:
        judge = ErrorRateJudge(max_rate, 20)
        for f in fails:
            if judge.observe(bool(f)).verdict is Verdict.FAIL:
                break
        out.append(judge.result.verdict)
    return out


def test_false_fail_rate_stays_below_alpha_with_a_look_after_every_request() -> None:
    verdicts = _first_verdicts(rate=0.05, max_rate=0.05, runs=400, n=400, seed=1)
    # alpha = 0.01 bounds P(ever fail) at every look; 400 runs: expect <= 4, 12 is p < 1e-4.
    assert verdicts.count(Verdict.FAIL) <= 12


def test_a_green_failing_three_times_too_often_is_caught() -> None:
    verdicts = _first_verdicts(rate=0.15, max_rate=0.05, runs=100, n=400, seed=2)
    assert verdicts.count(Verdict.FAIL) >= 90


@pytest.mark.parametrize(("max_rate", "within"), [(0.05, 3), (0.01, 2)])
def test_a_green_failing_everything_fails_within_a_few_requests(max_rate: float,
                                                                 within: int) -> None:
    judge = ErrorRateJudge(max_rate, 20)
    for _ in range(within):
        r = judge.observe(True)
    assert r.verdict is Verdict.FAIL and r.decided_at == within
    assert "failed" in r.reason


def test_a_clean_green_passes_after_the_documented_number_of_requests() -> None:
    p0, beta = 0.05, 0.05
    pf = 2 * p0
    expected = math.ceil(math.log(1 / beta) / math.log((1 - p0) / (1 - pf)))
    judge = ErrorRateJudge(p0, 20, beta=beta)
    n = 0
    while judge.result.verdict is not Verdict.PASS:
        n += 1
        judge.observe(False)
        assert n <= 1000
    assert n == expected == judge.result.decided_at


def test_min_requests_holds_back_a_pass() -> None:
    judge = ErrorRateJudge(0.5, 30)  # a large budget would pass after a handful of requests
    for i in range(1, 30):
        assert judge.observe(False).verdict is Verdict.CONTINUE, i
    assert judge.observe(False).verdict is Verdict.PASS


def test_zero_tolerance() -> None:
    judge = ErrorRateJudge(0.0, 5)
    for _ in range(5):
        judge.observe(False)
    assert judge.result.verdict is Verdict.PASS
    assert judge.observe(True).verdict is Verdict.FAIL


def test_a_pass_can_still_turn_into_a_fail_but_a_fail_is_final() -> None:
    judge = ErrorRateJudge(0.05, 20)
    for _ in range(60):
        judge.observe(False)
    assert judge.result.verdict is Verdict.PASS
    while judge.result.verdict is Verdict.PASS:
        judge.observe(True)
    assert judge.result.verdict is Verdict.FAIL
    for _ in range(1000):
        judge.observe(False)
    assert judge.result.verdict is Verdict.FAIL


def test_totals_at_one_look() -> None:
    spec = ErrorRateGateSpec(max_rate=0.05)
    assert evaluate_error_rate(0, 0, spec).verdict is Verdict.NODATA
    assert evaluate_error_rate(0, 100, spec).verdict is Verdict.PASS
    assert evaluate_error_rate(6, 10, spec).verdict is Verdict.FAIL
    r = evaluate_error_rate(5, 100, spec)
    assert r.verdict is Verdict.CONTINUE and r.rate == pytest.approx(0.05)
    with pytest.raises(ValueError, match="errors <= requests"):
        evaluate_error_rate(3, 2, spec)


def test_bad_parameters() -> None:
    for kwargs in ({"max_rate": 1.0}, {"max_rate": -0.1}, {"min_requests": 0},
                   {"alpha": 0.0}, {"futility_ratio": 1.0}):
        with pytest.raises(ValueError):
            ErrorRateJudge(**kwargs)  # type: ignore[arg-type]


def test_policies_still_parse_error_rate_gates_from_their_new_home() -> None:
    from rollout.policy.loader import load_policy

    pol = load_policy(ROOT / "policies" / "examples" / "local-demo.yaml")
    gates = [g for g in pol.spec.gates if isinstance(g, ErrorRateGateSpec)]
    assert len(gates) == 1 and gates[0].max_rate == 0.05


@pytest.mark.parametrize("max_rate", [0.9, 0.95, 0.99])
def test_a_tolerant_max_rate_still_judges_instead_of_crashing(max_rate: float) -> None:
    # maxRate >= 0.9 once left the fail mixture empty: max() of an empty sequence, mid-canary.
    judge = ErrorRateJudge(max_rate, 5)
    for _ in range(2000):  # p1 = (1 + maxRate) / 2: about 920 all-failing requests at 0.99
        r = judge.observe(True)
        if r.verdict is Verdict.FAIL:
            break
    assert r.verdict is Verdict.FAIL
    clean = ErrorRateJudge(max_rate, 5)
    for _ in range(5):
        r = clean.observe(False)
    assert r.verdict is Verdict.PASS
