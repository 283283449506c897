"""The pure state machine: every phase's paths, including every rollback path."""

from __future__ import annotations

import itertools

import pytest

from gates.verdict import Verdict
from rollout.machine import (
    TERMINAL,
    TRANSITIONS,
    GateResult,
    Observation,
    Phase,
    Plan,
    RolloutStatus,
    Weights,
    action_for,
    decide,
)

PLAN = Plan(weights=(0, 50, 100), on_inconclusive="pause", verify=True)
PASS = Observation(gates={"p95": GateResult(Verdict.PASS, "ok")})
FAIL = Observation(gates={"p95": GateResult(Verdict.FAIL, "green P95 x1.4"),
                          "errors": GateResult(Verdict.PASS)})
NODATA = Observation(gates={"p95": GateResult(Verdict.NODATA, "prometheus returned no series")})


def status(phase: Phase, **kw: object) -> RolloutStatus:
    return RolloutStatus(name="r", plan=kw.pop("plan", PLAN), phase=phase, **kw)  # type: ignore[arg-type]


def weights_obs(s: RolloutStatus) -> Observation:
    a = action_for(s)
    assert a.kind == "set_weights"
    return Observation(weights=a.weights)


def run_happy_path(plan: Plan) -> list[Phase]:
    s = status(Phase.PENDING, plan=plan)
    seen = [s.phase]
    while not s.terminal:
        kind = action_for(s).kind
        obs = weights_obs(s) if kind == "set_weights" else (PASS if kind != "none" else
                                                            Observation())
        s = decide(s, obs).status
        seen.append(s.phase)
    return seen


def test_happy_path_visits_every_step_and_promotes() -> None:
    seen = run_happy_path(PLAN)
    assert seen == [Phase.PENDING, Phase.ADMITTING,
                    Phase.SHIFTING, Phase.ANALYZING, Phase.SHIFTING, Phase.ANALYZING,
                    Phase.SHIFTING, Phase.ANALYZING, Phase.PROMOTING, Phase.VERIFYING,
                    Phase.PROMOTED]


def test_without_verification_promoting_ends_promoted() -> None:
    assert run_happy_path(Plan(weights=(10,)))[-2:] == [Phase.PROMOTING, Phase.PROMOTED]


def test_shifting_sets_step_weight_and_generation_increments() -> None:
    s = status(Phase.SHIFTING, step=1, generation=7)
    assert action_for(s).weights == Weights(blue=50, green=50)
    nxt = decide(s, weights_obs(s)).status
    assert (nxt.phase, nxt.step, nxt.generation) == (Phase.ANALYZING, 1, 8)
    assert nxt.weights == Weights(blue=50, green=50)


@pytest.mark.parametrize("phase", [Phase.ADMITTING, Phase.ANALYZING, Phase.VERIFYING])
def test_failed_gate_rolls_back_from_every_analysis_phase(phase: Phase) -> None:
    d = decide(status(phase), FAIL)
    assert d.status.phase is Phase.ROLLING_BACK
    assert "p95" in d.reason and "x1.4" in d.reason
    assert d.status.verdicts == {"p95": "fail", "errors": "pass"}


@pytest.mark.parametrize("obs", [NODATA, Observation(), Observation(error="canary crashed"),
                                 Observation(gates={"p95": GateResult(Verdict.INCONCLUSIVE)})])
def test_nodata_error_inconclusive_never_promote(obs: Observation) -> None:
    paused = decide(status(Phase.ANALYZING, step=2), obs).status
    assert paused.phase is Phase.PAUSED and paused.paused_from is Phase.ANALYZING
    rb = decide(status(Phase.ANALYZING, plan=Plan(weights=(0, 100))), obs).status
    assert rb.phase is Phase.ROLLING_BACK
    # After the switch, nothing but a pass keeps green.
    assert decide(status(Phase.VERIFYING), obs).status.phase is Phase.ROLLING_BACK


def test_paused_resumes_into_the_same_analysis() -> None:
    p = decide(status(Phase.ANALYZING, step=1), NODATA).status
    assert decide(p, Observation()).status.phase is Phase.PAUSED
    r = decide(p.model_copy(update={"resume_requested": True}), Observation()).status
    assert (r.phase, r.step, r.resume_requested) == (Phase.ANALYZING, 1, False)


@pytest.mark.parametrize("phase", [Phase.SHIFTING, Phase.PROMOTING])
def test_router_mismatch_or_error_rolls_back(phase: Phase) -> None:
    s = status(phase, step=1)
    bad = decide(s, Observation(weights=Weights(blue=100, green=0))).status
    assert bad.phase is Phase.ROLLING_BACK and "not applied" in bad.reason
    err = decide(s, Observation(error="socket missing")).status
    assert err.phase is Phase.ROLLING_BACK and "socket missing" in err.reason


def test_rollback_retries_then_reports_and_ends_rolled_back_or_aborted() -> None:
    s = status(Phase.ROLLING_BACK, reason="p95 failed")
    retry = decide(s, Observation(error="timeout")).status
    assert (retry.phase, retry.rollback_attempts) == (Phase.ROLLING_BACK, 1)
    done = decide(retry, weights_obs(retry)).status
    assert done.phase is Phase.ROLLED_BACK and done.weights == Weights(blue=100, green=0)
    aborted = decide(s.model_copy(update={"abort_requested": True}), weights_obs(s)).status
    assert aborted.phase is Phase.ABORTED


@pytest.mark.parametrize("phase", sorted(set(Phase) - TERMINAL - {Phase.ROLLING_BACK}))
@pytest.mark.parametrize("flag", ["abort_requested", "rollback_requested"])
def test_abort_and_rollback_reach_blue_from_every_live_phase(phase: Phase, flag: str) -> None:
    s = status(phase, **{flag: True})
    assert decide(s, PASS).status.phase is Phase.ROLLING_BACK


def test_terminal_phases_are_sticky() -> None:
    for phase in TERMINAL:
        s = status(phase, reason="done")
        assert decide(s, FAIL).status.phase is phase


def test_every_decision_respects_the_transition_table() -> None:
    observations = [PASS, FAIL, NODATA, Observation(), Observation(error="x"),
                    Observation(weights=Weights(blue=0, green=100)),
                    Observation(weights=Weights(blue=100, green=0))]
    for phase, obs, pause, flags in itertools.product(
            Phase, observations, ["pause", "rollback"], [(False, False, False), (True, False, True),
                                                         (False, True, False)]):
        plan = Plan(weights=(0, 100), on_inconclusive=pause)  # type: ignore[arg-type]
        s = status(phase, plan=plan, abort_requested=flags[0], rollback_requested=flags[1],
                   resume_requested=flags[2], paused_from=Phase.ANALYZING)
        nxt = decide(s, obs).status
        assert nxt.phase is phase or nxt.phase in TRANSITIONS[phase]


def test_manual_promotion_waits_for_a_confirmation_not_a_resume() -> None:
    """promotion.auto: false was documented and never read: green was promoted anyway."""
    from rollout.machine import AWAITING_PROMOTION

    s = RolloutStatus(name="m", plan=Plan(weights=(0, 50), auto_promote=False),
                      phase=Phase.ANALYZING, step=1, promote_requested=True)
    ok = Observation(gates={"p95": GateResult(Verdict.PASS)})
    waiting = decide(s, ok).status
    assert waiting.phase is Phase.PAUSED and waiting.reason.startswith(AWAITING_PROMOTION)
    assert not waiting.promote_requested  # an early confirmation does not count
    resumed = decide(waiting.model_copy(update={"resume_requested": True}), Observation())
    assert resumed.status.phase is Phase.PAUSED  # resume is not a promotion
    confirmed = decide(waiting.model_copy(update={"promote_requested": True}), Observation())
    assert confirmed.status.phase is Phase.PROMOTING
    assert action_for(confirmed.status).weights == Weights(blue=0, green=100)
    aborted = decide(waiting.model_copy(update={"abort_requested": True}), Observation())
    assert aborted.status.phase is Phase.ROLLING_BACK
