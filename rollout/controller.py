"""The controller loop: persist, act, verify, decide, persist.

Order of every iteration (the crash-safety argument of :mod:`rollout.machine`):

1. fold pending user intents (abort/rollback/resume) into the status;
2. run the current phase's one idempotent action (its status was persisted *before*);
3. verify the effect (router weights are read back, not assumed);
4. ``decide`` the next status and persist it with its evidence and the consumed intents in one
   transaction.

A controller killed between 1 and 4 resumes at the same phase and re-runs the same idempotent
action, so nothing is lost and nothing is replayed with a different recorded outcome.
The environment variable ``ROLLOUT_CRASH_AT`` (``Phase:step:before|after``, e.g.
``Shifting:1:after``) kills the process with SIGKILL at that point: the crash tests use it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from rollout.errors import RolloutError
from rollout.machine import (
    Action,
    Observation,
    Phase,
    RolloutStatus,
    action_for,
    decide,
)
from rollout.platforms.base import StatusStore
from rollout.routers.base import TrafficRouter

__all__ = ["Analyzer", "Controller", "crash_point"]

CRASH_ENV = "ROLLOUT_CRASH_AT"


class Analyzer(Protocol):
    """Runs the gates of a phase and reports their verdicts (never raises for a bad green)."""

    def admit(self, status: RolloutStatus) -> Observation:
        """Capability admission of green (and its diff against blue)."""

    def analyze(self, status: RolloutStatus, step: int) -> Observation:
        """The gates of traffic step ``step`` (canary, live metrics, utilization, errors)."""

    def verify(self, status: RolloutStatus) -> Observation:
        """Post-promotion verification on full traffic."""


def crash_point(status: RolloutStatus, when: str) -> None:
    """SIGKILL ourselves if ``ROLLOUT_CRASH_AT`` names this point (crash-safety tests only)."""
    target = os.environ.get(CRASH_ENV)
    if target and target == f"{status.phase.value}:{status.step}:{when}":
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Controller:
    """Drives one rollout until it is terminal, paused, or stuck rolling back."""

    store: StatusStore
    router: TrafficRouter
    analyzer: Analyzer
    on_transition: Callable[[RolloutStatus, RolloutStatus, Observation], None] | None = None

    def run(self, status: RolloutStatus) -> RolloutStatus:
        """Advance ``status`` (already persisted) as far as it can go and return the last one.

        Stops at a terminal phase, at ``Paused`` (a human must resume), or in ``RollingBack``
        when the router refused every attempt (``rollout resume`` tries again).
        """
        while not status.terminal:
            status, consumed = self.store.pending_intents(status)
            action = action_for(status)
            if action.kind == "wait" and not consumed:
                return status  # paused: only a human's intent moves it on
            crash_point(status, "before")
            obs = self._execute(action, status)
            crash_point(status, "after")
            nxt = decide(status, obs).status
            self.store.save(nxt, previous=status, evidence=_evidence(action, obs),
                            consumed=consumed)
            if self.on_transition is not None:
                self.on_transition(status, nxt, obs)
            stuck = (nxt.phase is Phase.ROLLING_BACK
                     and nxt.rollback_attempts >= nxt.plan.max_rollback_attempts)
            status = nxt
            if stuck:
                return status
        return status

    def _execute(self, action: Action, status: RolloutStatus) -> Observation:
        try:
            match action.kind:
                case "admit":
                    return self.analyzer.admit(status)
                case "analyze":
                    return self.analyzer.analyze(status, status.step)
                case "verify":
                    return self.analyzer.verify(status)
                case "set_weights":
                    assert action.weights is not None
                    self.router.set_weights(action.weights)
                    return Observation(weights=self.router.get_weights())
                case _:
                    return Observation()
        except RolloutError as e:
            return Observation(error=f"{type(e).__name__}: {e}")


def _evidence(action: Action, obs: Observation) -> dict[str, Any]:
    return {
        "action": action.kind,
        "target_weights": action.weights.model_dump() if action.weights else None,
        "weights": obs.weights.model_dump() if obs.weights else None,
        "error": obs.error,
        "gates": {n: {**asdict(g), "verdict": g.verdict.value} for n, g in obs.gates.items()},
        **dict(obs.evidence),
    }
