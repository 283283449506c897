"""The fleet statistics (:mod:`gates.stats.fleet`) and the seeded spread
(:mod:`gates.canary.fleet`): levels that add up, small samples that never pass, verdicts that
name the instance, and an assignment that is balanced, reproducible and pairs each green
instance with all of blue's."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gates.canary.evaluation import CanaryEvaluation, SliceOutcome
from gates.canary.fleet import Instance, InstancePicker
from gates.canary.records import Arm, RequestRecord
from gates.latency import LatencyGateSpec
from gates.stats.fleet import (
    InstanceRatio,
    fleet_levels,
    fleet_verdict,
    instance_verdict,
    min_samples,
    slowest_instance,
    summarize_instance,
)
from gates.verdict import Verdict


@given(alpha=st.floats(1e-6, 0.5), m=st.integers(1, 500))
def test_levels_spend_at_most_alpha_in_all(alpha: float, m: int) -> None:
    lv = fleet_levels(alpha, m)
    spent = lv.pooled_alpha + (m * lv.instance_alpha if lv.per_instance else 0.0)
    assert spent <= alpha * (1 + 1e-12)
    assert lv.per_instance is (m > 1)
    if m == 1:  # the pooled test is the instance's: it keeps everything
        assert lv.pooled_alpha == alpha


def test_levels_refuse_nonsense() -> None:
    for alpha, m in ((0.0, 2), (1.0, 2), (0.01, 0)):
        with pytest.raises(ValueError):
            fleet_levels(alpha, m)


def test_min_samples_is_the_fewest_for_a_quantile_below_the_maximum() -> None:
    assert min_samples(0.95) == 20 and min_samples(0.5) == 2 and min_samples(0.99) == 100


@given(n=st.integers(0, 200), needed=st.integers(1, 50),
       latency=st.sampled_from([Verdict.PASS, Verdict.CONTINUE, Verdict.INCONCLUSIVE]))
def test_too_few_samples_or_an_undecided_judge_is_never_a_pass(
        n: int, needed: int, latency: Verdict) -> None:
    v = instance_verdict("pod p", n, latency, "why", needed=needed)
    if n < needed:
        assert v.verdict is Verdict.NODATA
    elif latency is not Verdict.PASS:
        assert v.verdict is Verdict.INCONCLUSIVE
    else:
        assert v.verdict is Verdict.PASS
    assert v.reason.startswith("pod p")


def test_a_failure_of_either_test_fails_the_instance_whatever_its_size() -> None:
    slow = instance_verdict("pod a on node n1", 3, Verdict.FAIL, "E = 900")
    broken = instance_verdict("pod b", 0, Verdict.CONTINUE, "", errors=Verdict.FAIL,
                              errors_reason="5 of 5 failed")
    assert slow.verdict is broken.verdict is Verdict.FAIL
    assert slow.reason == "pod a on node n1 is slower than blue's pool: E = 900"
    assert broken.reason == "pod b is broken: 5 of 5 failed"


def test_fleet_verdict_fails_naming_the_instance_and_passes_only_when_all_pass() -> None:
    ok = instance_verdict("pod a", 50, Verdict.PASS, "fine")
    bad = instance_verdict("pod b on node n2", 50, Verdict.FAIL, "slow")
    undecided = instance_verdict("pod c", 50, Verdict.CONTINUE, "more")
    failed = fleet_verdict(Verdict.PASS, "pooled ok", [ok, bad, undecided])
    assert failed.verdict is Verdict.FAIL and failed.failed == ("pod b on node n2",)
    assert "pod b on node n2 is slower" in failed.reason and "pod a" not in failed.reason
    held = fleet_verdict(Verdict.PASS, "pooled ok", [ok, undecided])
    assert held.verdict is Verdict.INCONCLUSIVE and held.undecided == ("pod c",)
    assert "pod c undecided" in held.reason
    assert fleet_verdict(Verdict.PASS, "pooled ok", [ok, ok]).verdict is Verdict.PASS
    suspect = InstanceRatio("pod c", 2.0, 0.4, 0.2)
    pooled = fleet_verdict(Verdict.FAIL, "pooled slow", [ok, undecided], suspect=suspect)
    assert pooled.verdict is Verdict.FAIL
    assert "slowest green instance: pod c (P95 0.400 s, 2.00x blue's pool" in pooled.reason


def test_slowest_instance_names_the_worst_ratio_among_those_with_enough_data() -> None:
    rng = np.random.default_rng(1)
    blue = rng.exponential(0.1, 400)
    green = {"a": rng.exponential(0.1, 100), "b": 2 * rng.exponential(0.1, 100),
             "tiny": 50 * rng.exponential(0.1, 5)}  # too few to say anything
    worst = slowest_instance(blue, green, quantile=0.95)
    assert worst is not None and worst.key == "b" and worst.ratio > 1.4
    assert slowest_instance(blue[:5], green, quantile=0.95) is None


def test_summaries_are_none_without_data() -> None:
    assert summarize_instance([], 3) == summarize_instance(np.zeros(0), 3)
    s = summarize_instance([0.1, 0.2, 0.3], 1)
    assert (s.n, s.errors) == (3, 1) and s.p50 == pytest.approx(0.2)


@settings(max_examples=60)
@given(size=st.integers(1, 9), seed=st.integers(0, 2**31), count=st.integers(0, 300))
def test_the_spread_is_balanced_and_reproducible(size: int, seed: int, count: int) -> None:
    fleet = [Instance(f"http://10.0.0.{i}:8000") for i in range(size)]
    picks = [InstancePicker(fleet, seed).pick(i) for i in range(count)]
    assert picks == [InstancePicker(fleet, seed).pick(i) for i in range(count)]
    n = Counter(picks)
    if count:
        assert max(n.values()) - min(n.get(i, 0) for i in fleet) <= 1


def test_each_green_instance_meets_every_blue_instance() -> None:
    """Plain round-robin with three pods per arm pairs green i with blue i forever; the seeded
    blocks pair each green instance with all of blue's pool."""
    blue = InstancePicker([Instance(f"http://b{i}") for i in range(3)], seed=5, stream=0)
    green = InstancePicker([Instance(f"http://g{i}") for i in range(3)], seed=5, stream=1)
    met: dict[str, Counter[str]] = {}
    for n in range(600):
        met.setdefault(green.pick(n).url, Counter())[blue.pick(n).url] += 1
    for partners in met.values():
        assert set(partners) == {"http://b0", "http://b1", "http://b2"}
        assert min(partners.values()) > 40  # about 67 each


def _record(arm: Arm, inst: Instance, latency: float, n: int,
            error: str | None = None) -> RequestRecord:
    return RequestRecord(slice=n, arm=arm, replica=0, order=0, prompt_id="p", seed=n,
                         start=0.0, latency_s=latency, instance=inst,
                         error=error)  # type: ignore[arg-type]


def test_evaluation_with_one_green_instance_keeps_the_whole_alpha() -> None:
    g = Instance("http://g0", pod="g0")
    ev = CanaryEvaluation(latency_gates=(LatencyGateSpec(alpha=0.02),),
                          fleet={"blue": (Instance("http://b0"),), "green": (g,)})
    rng = np.random.default_rng(3)
    for n in range(200):
        b, x = rng.exponential(0.1, 2)
        ev.consume(SliceOutcome(n, _record("green", g, 3 * x, n),
                                (_record("blue", Instance("http://b0"), b, n),)))
    lat = ev.gate_results()[0]
    assert lat.verdict is Verdict.FAIL and "levels" not in lat.evidence
    assert ev._latency[0].judge is not None and math.isclose(ev._latency[0].judge.alpha, 0.02)
    outcomes = {o.arm: o for o in ev.instance_outcomes(ev.gate_results())}
    assert outcomes["green"].verdict == "fail" and outcomes["blue"].verdict == "baseline"
