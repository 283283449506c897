"""The one GateResult, the one combiner (canary and state machine alike) and the registry."""

from __future__ import annotations

import pytest

from gates.canary.output_check import OutputCheckSpec
from gates.canary.runner import CanaryConfig
from gates.capability import CapabilityRequirements
from gates.error_rate import ErrorRateGateSpec
from gates.gate import GateResult, combine
from gates.latency import LatencyGateSpec
from gates.registry import (
    Measurement,
    canary_gates,
    capability_gates,
    check_named,
    checks,
    utilization_gates,
)
from gates.utilization import UtilizationRequirements
from gates.verdict import Verdict
from rollout.machine import Observation, Phase, Plan, RolloutStatus, decide

GATES = [LatencyGateSpec(name="p95"), LatencyGateSpec(name="live-p95", source="prometheus"),
         ErrorRateGateSpec(), CapabilityRequirements(name="caps"),
         UtilizationRequirements(name="util", floor_percent=20)]


@pytest.mark.parametrize(("verdicts", "expected"), [
    ([Verdict.PASS, Verdict.FAIL, Verdict.ERROR], Verdict.FAIL),
    ([Verdict.PASS, Verdict.NODATA, Verdict.ERROR], Verdict.ERROR),
    ([Verdict.CONTINUE, Verdict.NODATA], Verdict.NODATA),
    ([Verdict.PASS, Verdict.CONTINUE], Verdict.INCONCLUSIVE),
    ([Verdict.PASS, Verdict.INCONCLUSIVE], Verdict.INCONCLUSIVE),
    ([Verdict.PASS, Verdict.PASS], Verdict.PASS),
    ([], Verdict.NODATA),
])
def test_one_precedence_for_the_canary_and_the_machine(verdicts: list[Verdict],
                                                       expected: Verdict) -> None:
    named = [GateResult(v, f"why {i}", name=f"g{i}") for i, v in enumerate(verdicts)]
    as_canary = combine(named)
    as_machine = combine({r.name: r for r in named})
    assert as_canary == as_machine and as_canary[0] is expected


def test_the_reason_names_every_open_gate_worst_first() -> None:
    verdict, why = combine({"a": GateResult(Verdict.CONTINUE, "undecided"),
                            "b": GateResult(Verdict.ERROR, "timeout", errors=5),
                            "c": GateResult(Verdict.PASS, "fine")})
    assert verdict is Verdict.ERROR
    assert why == "b: error: timeout; a: continue: undecided"
    verdict, why = combine({"a": GateResult(Verdict.FAIL, "slow"),
                            "b": GateResult(Verdict.ERROR, "timeout")})
    assert (verdict, why) == (Verdict.FAIL, "a: slow")


def test_the_machine_rolls_back_on_error_by_policy_and_names_the_verdict() -> None:
    s = RolloutStatus(name="r", plan=Plan(weights=(50,), on_inconclusive="pause"),
                      phase=Phase.ANALYZING)
    obs = Observation(gates={"p95": GateResult(Verdict.ERROR, "Prometheus down", errors=5)})
    d = decide(s, obs)
    assert d.status.phase is Phase.PAUSED and "step 0 analysis error" in d.reason
    after = decide(s.model_copy(update={"phase": Phase.VERIFYING}), obs)
    assert after.status.phase is Phase.ROLLING_BACK


def test_registry_checks_and_their_measurements() -> None:
    with_live = {c.name: c.measurement for c in checks(GATES, live=True)}
    assert with_live == {"p95": Measurement.CANARY, "live-p95": Measurement.LIVE,
                         "error-rate": Measurement.CANARY,
                         "error-rate-live": Measurement.LIVE,
                         "caps": Measurement.CAPABILITY, "util": Measurement.UTILIZATION}
    assert "error-rate-live" not in {c.name for c in checks(GATES, live=False)}
    live = check_named(GATES, "error-rate-live", live=True)
    assert live is not None and live.method == "live 5xx rate from Prometheus counters"
    assert live.parameters()["max_rate"] == 0.01
    judged = canary_gates(GATES)
    assert [g.name for g in judged.latency] == ["p95"] and judged.names == ("p95", "error-rate")
    assert [g.name for g in capability_gates(GATES)] == ["caps"]
    assert [g.name for g in utilization_gates(GATES)] == ["util"]


def test_from_spec_maps_the_canary_block_and_the_canary_gates() -> None:
    class Canary:
        prompts, api, max_requests, concurrency, blue_per_green = "unused", "openai", 50, 4, 2
        warmup_requests, timeout_seconds, deadline_seconds, rate = 1, 9.0, 99.0, 2.5
        output_check = OutputCheckSpec(mode="equal")

    from gates.canary.prompts import Prompt

    prompt = Prompt(id="p", prompt="a cat", seed=1)
    c = CanaryConfig.from_spec(Canary(), GATES, blue_url="http://b", green_url="http://g",
                               prompts=[prompt], max_body_bytes=4096)
    assert (c.rate, c.output_check.mode, c.blue_per_green, c.max_body_bytes) == (
        2.5, "equal", 2, 4096)
    assert [g.name for g in c.latency_gates] == ["p95"] and c.error_gate == ErrorRateGateSpec()
    no_errors = CanaryConfig.from_spec(Canary(), GATES[:1], blue_url="http://b",
                                       green_url="http://g", prompts=[prompt])
    assert no_errors.error_gate == ErrorRateGateSpec()  # the default one, as before
