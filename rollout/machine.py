"""The rollout state machine: phases, one transitions table, and a pure ``decide``.

Why explicit: Flagger's scheduler grew into ~1,100 lines of implicit if-chains, and its users
found phases with no rollback path (flagger #1801, #1591). Here every phase has exactly one
idempotent *action* (:func:`action_for`), the controller runs it, and :func:`decide` maps
(status, what the action observed) to the next phase. ``decide`` is pure, so every path,
including each rollback path, is unit-tested without any I/O, and :data:`TRANSITIONS` is checked
on every step so an impossible transition is a bug caught at once, never a silent state.

Crash safety follows from the shape: the controller persists the status (with the phase whose
action is about to run) *before* the side effect and persists the outcome *after* verifying
it. A killed controller resumes by re-running the current phase's action, which is idempotent
(setting weights, re-running an analysis), so no transition is lost or replayed differently.

Phases::

    Pending -> Admitting -> Shifting(0) -> Analyzing(0) -> Shifting(1) -> ... -> Promoting
            -> Verifying -> Promoted
    any non-terminal phase --breach/abort--> RollingBack -> RolledBack | Aborted
    Admitting/Analyzing --inconclusive (policy: pause)--> Paused --resume--> same analysis
    Analyzing(last) --promotion.auto false--> Paused (AwaitingPromotion) --promote --confirm-->
            Promoting
    Shifting/Analyzing --pause--> Paused (traffic held where it is) --resume--> the phase the
            rollout would have gone to next (an analysis that passed is not run again)

``retry`` (a RolledBack or Aborted rollout again from step 0) is not a transition: a finished
rollout never moves again, so the in-cluster controller starts a *new run* (attempt + 1) when
it finds a retry intent on a finished one (see :mod:`rollout.operator.reconcile`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gates.gate import GateResult, combine
from gates.verdict import Verdict

__all__ = [
    "AWAITING_PROMOTION",
    "TERMINAL",
    "TRANSITIONS",
    "Action",
    "Decision",
    "GateResult",
    "IllegalTransitionError",
    "Observation",
    "Phase",
    "Plan",
    "RolloutStatus",
    "Weights",
    "action_for",
    "decide",
]


class Phase(StrEnum):
    """Where a rollout is; the value is what users see in ``rollout status``."""

    PENDING = "Pending"
    ADMITTING = "Admitting"
    SHIFTING = "Shifting"
    ANALYZING = "Analyzing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    VERIFYING = "Verifying"
    PROMOTED = "Promoted"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"


TERMINAL: frozenset[Phase] = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED})

#: Every allowed transition. RollingBack may repeat (router retry) but never goes forward.
TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.ADMITTING, Phase.ROLLING_BACK}),
    Phase.ADMITTING: frozenset({Phase.SHIFTING, Phase.PAUSED, Phase.ROLLING_BACK}),
    Phase.SHIFTING: frozenset({Phase.ANALYZING, Phase.PAUSED, Phase.ROLLING_BACK}),
    Phase.ANALYZING: frozenset({Phase.SHIFTING, Phase.PROMOTING, Phase.PAUSED,
                                Phase.ROLLING_BACK}),
    Phase.PAUSED: frozenset({Phase.PAUSED, Phase.ADMITTING, Phase.SHIFTING, Phase.ANALYZING,
                             Phase.PROMOTING, Phase.ROLLING_BACK}),
    Phase.PROMOTING: frozenset({Phase.VERIFYING, Phase.PROMOTED, Phase.ROLLING_BACK}),
    Phase.VERIFYING: frozenset({Phase.PROMOTED, Phase.ROLLING_BACK}),
    Phase.ROLLING_BACK: frozenset({Phase.ROLLING_BACK, Phase.ROLLED_BACK, Phase.ABORTED}),
    Phase.PROMOTED: frozenset(),
    Phase.ROLLED_BACK: frozenset(),
    Phase.ABORTED: frozenset(),
}


#: The reason prefix of the manual promotion gate's pause (what ``rollout status`` shows).
AWAITING_PROMOTION = "AwaitingPromotion"


class IllegalTransitionError(RuntimeError):
    """``decide`` produced a transition the table forbids: a programming error."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Weights(_Frozen):
    """Traffic split in percent, as set or as read back from the router."""

    blue: int = Field(ge=0, le=100)
    green: int = Field(ge=0, le=100)


class Plan(_Frozen):
    """The parts of the policy the state machine needs, frozen at ``rollout promote`` time so a
    policy edited mid-rollout cannot change the meaning of a persisted step index."""

    weights: tuple[int, ...] = Field(min_length=1)
    on_inconclusive: Literal["pause", "rollback"] = "rollback"
    verify: bool = False
    #: ``promotion.auto``: False stops in Paused (``AwaitingPromotion``) once every step passed,
    #: until ``rollout promote NAME --confirm`` (Argo Rollouts' ``autoPromotionEnabled``).
    auto_promote: bool = True
    max_rollback_attempts: int = 5
    #: The policy's ``router`` block as written, so ``abort``/``rollback`` can return traffic
    #: to blue from the store alone when the saved policy copy is unreadable.
    router: dict[str, Any] | None = None


class RolloutStatus(_Frozen):
    """The durable status of one rollout (what is persisted before every side effect)."""

    name: str
    plan: Plan
    phase: Phase = Phase.PENDING
    step: int = 0
    generation: int = 0
    paused_from: Phase | None = None
    abort_requested: bool = False
    rollback_requested: bool = False
    resume_requested: bool = False
    promote_requested: bool = False
    #: ``rollout pause NAME``: hold traffic where it is at the next step boundary.
    pause_requested: bool = False
    #: ``rollout retry NAME``: only meaningful on a RolledBack or Aborted rollout, where the
    #: controller starts a new run; cleared by every transition of an unfinished one.
    retry_requested: bool = False
    rollback_attempts: int = 0
    reason: str = ""
    verdicts: dict[str, str] = Field(default_factory=dict)
    weights: Weights | None = None
    #: Set when an action raised an unexpected exception: the rollout was rolled back because
    #: the controller failed, not because green was judged worse (a distinct exit code).
    internal_error: bool = False
    #: The RolloutPolicy ``metadata.generation`` this run rolls out (0 outside a cluster): a
    #: status of an older generation is never reported as the verdict on the current spec.
    spec_generation: int = Field(0, ge=0)
    #: Runs of this spec generation (``retry`` adds one).
    attempt: int = Field(1, ge=1)

    @property
    def terminal(self) -> bool:
        """Whether nothing more will happen to this rollout."""
        return self.phase in TERMINAL


@dataclass(frozen=True)
class Action:
    """The one idempotent side effect a phase performs."""

    kind: Literal["none", "admit", "set_weights", "analyze", "verify", "wait"]
    weights: Weights | None = None
    step: int | None = None


@dataclass(frozen=True)
class Observation:
    """What running a phase's action showed. Empty for actions with nothing to report."""

    gates: Mapping[str, GateResult] = field(default_factory=dict)
    weights: Weights | None = None
    error: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    #: The action raised something unexpected (a bug, a resource limit): never pause on it,
    #: never retry it forward; traffic goes back to blue.
    internal: bool = False


@dataclass(frozen=True)
class Decision:
    """The next status and why."""

    status: RolloutStatus
    reason: str


def _blue_green(green: int) -> Weights:
    return Weights(blue=100 - green, green=green)


def action_for(status: RolloutStatus) -> Action:
    """The side effect the controller must (re-)run in ``status.phase``."""
    match status.phase:
        case Phase.ADMITTING:
            return Action("admit")
        case Phase.SHIFTING:
            return Action("set_weights", weights=_blue_green(status.plan.weights[status.step]),
                          step=status.step)
        case Phase.ANALYZING:
            return Action("analyze", step=status.step)
        case Phase.PROMOTING:
            return Action("set_weights", weights=_blue_green(100))
        case Phase.VERIFYING:
            return Action("verify")
        case Phase.ROLLING_BACK:
            return Action("set_weights", weights=_blue_green(0))
        case Phase.PAUSED:
            return Action("wait")
        case _:
            return Action("none")


def decide(status: RolloutStatus, obs: Observation) -> Decision:
    """Next status after the current phase's action produced ``obs``. Pure.

    Raises:
        IllegalTransitionError: the computed transition is not in :data:`TRANSITIONS`.
    """
    nxt, reason = _pause(status, *_next(status, obs))
    if nxt.phase not in TRANSITIONS[status.phase] and nxt.phase is not status.phase:
        raise IllegalTransitionError(f"{status.phase} -> {nxt.phase} ({reason})")
    verdicts = {n: g.verdict.value for n, g in obs.gates.items()} or status.verdicts
    nxt = nxt.model_copy(update={
        "generation": status.generation + 1,
        "reason": reason,
        "verdicts": verdicts,
        "weights": obs.weights if obs.weights is not None else status.weights,
        "retry_requested": False,
    })
    return Decision(status=nxt, reason=reason)


#: Where a pause may stop a rollout: between two steps, before live traffic moves again.
_PAUSABLE = frozenset({Phase.SHIFTING, Phase.ANALYZING})


def _pause(s: RolloutStatus, nxt: RolloutStatus, reason: str) -> tuple[RolloutStatus, str]:
    """Apply a pending ``pause`` to the transition ``s -> nxt``.

    The pause takes effect where the rollout was about to go next (Shifting or Analyzing), so
    nothing already measured is thrown away and ``resume`` continues exactly there; a breach,
    an abort or a promotion decided meanwhile goes first (pausing cannot delay a rollback).
    Paused already: the request is simply absorbed.
    """
    if not s.pause_requested:
        return nxt, reason
    if s.phase is Phase.PAUSED:
        return nxt.model_copy(update={"pause_requested": False}), reason
    if s.phase in _PAUSABLE and nxt.phase in _PAUSABLE:
        return nxt.model_copy(update={"phase": Phase.PAUSED, "paused_from": nxt.phase,
                                      "pause_requested": False}), (
            f"paused by user before {nxt.phase.value} of step {nxt.step} (traffic held); "
            f"{reason}")
    return nxt, reason


def _go(status: RolloutStatus, phase: Phase, reason: str, **changes: object) -> tuple[
        RolloutStatus, str]:
    return status.model_copy(update={"phase": phase, **changes}), reason


def _rollback(status: RolloutStatus, reason: str) -> tuple[RolloutStatus, str]:
    return _go(status, Phase.ROLLING_BACK, reason, rollback_attempts=0)


def _next(s: RolloutStatus, obs: Observation) -> tuple[RolloutStatus, str]:
    if s.terminal:
        return s, s.reason
    if s.phase is not Phase.ROLLING_BACK:
        if obs.internal:
            return _rollback(s.model_copy(update={"internal_error": True}),
                             f"internal error in {s.phase.value}: {obs.error}")
        if s.abort_requested:
            return _rollback(s, "aborted by user")
        if s.rollback_requested:
            return _rollback(s, "rollback requested by user")
    match s.phase:
        case Phase.PENDING:
            return _go(s, Phase.ADMITTING, "admitting green")
        case Phase.ADMITTING | Phase.ANALYZING | Phase.VERIFYING:
            return _after_analysis(s, obs)
        case Phase.SHIFTING | Phase.PROMOTING:
            expected = action_for(s).weights
            if obs.error or (obs.weights is not None and obs.weights != expected):
                got = obs.error or f"router reads back {obs.weights}"
                return _rollback(s, f"traffic shift to {expected} not applied: {got}")
            if s.phase is Phase.SHIFTING:
                return _go(s, Phase.ANALYZING, f"traffic at {expected}; analysing step {s.step}")
            if s.plan.verify:
                return _go(s, Phase.VERIFYING, "all traffic on green; verifying")
            return _go(s, Phase.PROMOTED, "all traffic on green")
        case Phase.PAUSED if s.paused_from is Phase.PROMOTING:
            if s.promote_requested:
                return _go(s, Phase.PROMOTING, "promotion confirmed by user",
                           promote_requested=False, resume_requested=False, paused_from=None)
            return _go(s, Phase.PAUSED, s.reason, resume_requested=False)
        case Phase.PAUSED:
            if s.resume_requested and s.paused_from is not None:
                return _go(s, s.paused_from, "resumed by user", resume_requested=False,
                           paused_from=None)
            return s, s.reason
        case Phase.ROLLING_BACK:
            expected = action_for(s).weights
            if obs.error or (obs.weights is not None and obs.weights != expected):
                if s.rollback_attempts + 1 >= s.plan.max_rollback_attempts:
                    return _go(s, Phase.ROLLING_BACK, f"rollback not applied after "
                               f"{s.rollback_attempts + 1} attempts: {obs.error or obs.weights}",
                               rollback_attempts=s.rollback_attempts + 1)
                return _go(s, Phase.ROLLING_BACK, f"retrying rollback: {obs.error or obs.weights}",
                           rollback_attempts=s.rollback_attempts + 1)
            final = Phase.ABORTED if s.abort_requested else Phase.ROLLED_BACK
            return _go(s, final, f"all traffic on blue ({s.reason})")
    raise IllegalTransitionError(f"no rule for phase {s.phase}")  # pragma: no cover


def _after_analysis(s: RolloutStatus, obs: Observation) -> tuple[RolloutStatus, str]:
    what = {Phase.ADMITTING: "admission", Phase.ANALYZING: f"step {s.step} analysis",
            Phase.VERIFYING: "post-promotion verification"}[s.phase]
    if obs.error:
        verdict, why = Verdict.ERROR, obs.error
    else:
        verdict, why = combine(obs.gates)  # its docstring: precedence and what rolls back
    if verdict is Verdict.PASS:
        if s.phase is Phase.ADMITTING:
            return _go(s, Phase.SHIFTING, f"green admitted; {why}", step=0)
        if s.phase is Phase.VERIFYING:
            return _go(s, Phase.PROMOTED, f"verified on full traffic; {why}")
        if s.step + 1 < len(s.plan.weights):
            return _go(s, Phase.SHIFTING, f"{what} passed", step=s.step + 1)
        if not s.plan.auto_promote:
            return _go(s, Phase.PAUSED, f"{AWAITING_PROMOTION}: {what} passed; "
                       f"'rollout promote {s.name} --confirm' switches all traffic to green",
                       paused_from=Phase.PROMOTING, promote_requested=False)
        return _go(s, Phase.PROMOTING, f"{what} passed; promoting")
    if verdict is Verdict.FAIL or s.phase is Phase.VERIFYING:
        # After the switch there is no one to wait for: anything but a pass goes back to blue.
        return _rollback(s, f"{what} {verdict.value}: {why}")
    if s.plan.on_inconclusive == "pause":
        return _go(s, Phase.PAUSED, f"{what} {verdict.value}: {why}; paused for a human",
                   paused_from=s.phase)
    return _rollback(s, f"{what} {verdict.value}: {why}; policy rolls back on inconclusive")
