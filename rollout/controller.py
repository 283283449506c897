"""The controller loop: persist, act, verify, decide, persist.

Order of every iteration (the crash-safety argument of :mod:`rollout.machine`):

1. fold pending user intents (abort/rollback/resume) into the status;
2. run the current phase's one idempotent action (its status was persisted *before*), unless
   an abort or rollback is pending: then no forward action runs at all (no analysis is re-run,
   no forward weight applied), and the next decision is RollingBack;
3. verify the effect (router weights are read back, not assumed), and fold in the intents that
   arrived *while* the action ran, so an abort during a canary preempts its outcome;
4. ``decide`` the next status and persist it with its evidence and the consumed intents in one
   transaction.

A controller killed between 1 and 4 resumes at the same phase and re-runs the same idempotent
action, so nothing is lost and nothing is replayed with a different recorded outcome.

Why every exception is caught: once traffic has moved, a traceback that leaves the process
strands users on green (the status says Analyzing, HAProxy says 50/50, nobody is acting). An
unexpected exception in an action is therefore an *internal* observation that always rolls
back; an exception anywhere else in the loop (the store, a decision bug) triggers an emergency
return to blue through the router, read back, before the error propagates.

``ROLLOUT_CRASH_AT`` (``Phase:step:before|after``, see :mod:`rollout.crashpoints`) kills the
process with SIGKILL at that point: the crash tests use it.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from rollout.crashpoints import crash_here
from rollout.errors import PermanentError, RolloutError
from rollout.machine import (
    Action,
    Observation,
    Phase,
    RolloutStatus,
    Weights,
    action_for,
    decide,
)
from rollout.platforms.base import StatusStore
from rollout.routers.base import TrafficRouter

__all__ = ["Analyzer", "Controller", "NoAnalysis", "crash_point", "stop_probe"]

_log = logging.getLogger("rollout.controller")
BLUE = Weights(blue=100, green=0)

#: Actions that move a rollout forward; a pending abort/rollback skips them.
_FORWARD = frozenset({"admit", "analyze", "verify"})


class Analyzer(Protocol):
    """Runs the gates of a phase and reports their verdicts (never raises for a bad green)."""

    def admit(self, status: RolloutStatus) -> Observation:
        """Capability admission of green (and its diff against blue)."""

    def analyze(self, status: RolloutStatus, step: int) -> Observation:
        """The gates of traffic step ``step`` (canary, live metrics, utilization, errors)."""

    def verify(self, status: RolloutStatus) -> Observation:
        """Post-promotion verification on full traffic."""


class NoAnalysis:
    """The analyzer of ``abort``/``rollback`` run from the store alone (no usable policy).

    Returning traffic to blue runs no gate, so any call is a bug; it still comes back as an
    ``error`` observation (which rolls back), never as a crash.
    """

    def _refuse(self) -> Observation:
        raise PermanentError("no policy loaded: this controller can only return traffic to blue")

    def admit(self, status: RolloutStatus) -> Observation:
        """Refused: see the class docstring."""
        return self._refuse()

    def analyze(self, status: RolloutStatus, step: int) -> Observation:
        """Refused: see the class docstring."""
        return self._refuse()

    def verify(self, status: RolloutStatus) -> Observation:
        """Refused: see the class docstring."""
        return self._refuse()


def crash_point(status: RolloutStatus, when: str) -> None:
    """SIGKILL ourselves at ``Phase:step:when`` if ``ROLLOUT_CRASH_AT`` names it."""
    crash_here(f"{status.phase.value}:{status.step}:{when}")


def _preempted(status: RolloutStatus, action: Action) -> bool:
    """Whether a pending abort/rollback must stop ``action`` from running at all."""
    if status.phase is Phase.ROLLING_BACK or not (status.abort_requested
                                                   or status.rollback_requested):
        return False
    return action.kind in _FORWARD or action.kind == "set_weights"


@dataclass
class Controller:
    """Drives one rollout until it is terminal, paused, or stuck rolling back."""

    store: StatusStore
    router: TrafficRouter
    analyzer: Analyzer
    on_transition: Callable[[RolloutStatus, RolloutStatus, Observation], None] | None = None
    _last: RolloutStatus | None = field(default=None, init=False, repr=False)

    def run(self, status: RolloutStatus) -> RolloutStatus:
        """Advance ``status`` (already persisted) as far as it can go and return the last one.

        Stops at a terminal phase, at ``Paused`` (a human must resume), or in ``RollingBack``
        when the router refused every attempt (``rollout resume`` tries again).

        Raises:
            Exception: whatever broke the loop outside an action (e.g. the store), *after*
                traffic was returned to blue and read back (see :meth:`_emergency`).
        """
        self._last = status
        try:
            return self._loop(status)
        except (Exception, KeyboardInterrupt) as e:
            self._emergency(e)
            raise

    def _loop(self, status: RolloutStatus) -> RolloutStatus:
        while not status.terminal:
            status, consumed = self.store.pending_intents(status)
            action = action_for(status)
            if action.kind == "wait" and not consumed:
                return status  # paused: only a human's intent moves it on
            if _preempted(status, action):
                obs = Observation(evidence={"skipped": f"{action.kind}: preempted by user"})
            else:
                crash_point(status, "before")
                obs = self._execute(action, status)
                crash_point(status, "after")
                status, late = self.store.pending_intents(status)
                consumed = sorted({*consumed, *late})
            nxt = decide(status, obs).status
            self.store.save(nxt, previous=status, evidence=_evidence(action, obs),
                            consumed=consumed)
            crash_here(f"notify:before:{nxt.phase.value}")
            if self.on_transition is not None:
                self.on_transition(status, nxt, obs)
            stuck = (nxt.phase is Phase.ROLLING_BACK
                     and nxt.rollback_attempts >= nxt.plan.max_rollback_attempts)
            status = self._last = nxt
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
                    # Routers retry their own temporary failures (one retry layer per client:
                    # the Kubernetes client, HAProxy's socket); what reaches us is final.
                    assert action.weights is not None
                    self.router.set_weights(action.weights)
                    return Observation(weights=self.router.get_weights())
                case _:
                    return Observation()
        except RolloutError as e:
            return Observation(error=f"{type(e).__name__}: {e}")
        except Exception as e:  # any bug after traffic moved must roll back
            tb = traceback.format_exc()
            _log.error("action %s in %s raised; rolling back:\n%s", action.kind,
                       status.phase.value, tb)
            return Observation(error=f"{type(e).__name__}: {e}", internal=True,
                               evidence={"traceback": tb})

    def _emergency(self, error: BaseException) -> None:
        """Put all traffic on blue and read it back, whatever broke the loop.

        Best effort on the record: RollingBack is saved before the switch and RolledBack after
        a blue read-back, but the store may be the thing that broke; then the next
        ``rollout resume``/``abort`` finds the last saved phase and finishes the rollback.
        """
        why = f"{type(error).__name__}: {error}"
        _log.error("controller loop failed (%s); returning traffic to blue", why)
        last = self._last
        if last is None:
            return
        rolling = last
        if not last.terminal and last.phase is not Phase.ROLLING_BACK:
            rolling = decide(last, Observation(error=why, internal=True)).status
            rolling = self._try_save(rolling, last)
        try:
            self.router.set_weights(BLUE)
            back = self.router.get_weights()
        except Exception as e:  # report, then let the original error propagate
            _log.error("emergency rollback failed: %s: %s (traffic state unknown)",
                       type(e).__name__, e)
            return
        _log.error("emergency rollback: router reads back %s", back)
        if rolling.phase is Phase.ROLLING_BACK:
            self._try_save(decide(rolling, Observation(weights=back)).status, rolling)

    def _try_save(self, status: RolloutStatus, previous: RolloutStatus) -> RolloutStatus:
        try:
            self.store.save(status, previous=previous, evidence={"action": "emergency"})
        except Exception as e:  # the store may be what failed
            _log.error("could not record %s: %s: %s", status.phase.value, type(e).__name__, e)
            return previous
        self._last = status
        return status


def stop_probe(store: StatusStore, name: str, *, every_s: float = 0.25,
               clock: Callable[[], float] = time.monotonic) -> Callable[[], str | None]:
    """For a running analysis: the reason to stop now if an abort or rollback of rollout
    ``name`` is pending (the canary asks between slices, so an abort acts within one slice).

    The store is read at most once per ``every_s``: the canary asks from its event loop many
    times a second, and a store read there would sit on the timing path of measured requests.
    """
    from rollout.machine import Plan

    status = RolloutStatus(name=name, plan=Plan(weights=(0,)))  # only its name is read
    last: list[tuple[float, str | None]] = []

    def read() -> str | None:
        try:
            flagged, _ = store.pending_intents(status)
        except RolloutError:
            return None
        if flagged.abort_requested:
            return "abort requested by user"
        if flagged.rollback_requested:
            return "rollback requested by user"
        return None

    def probe() -> str | None:
        now = clock()
        if not last or now - last[0][0] >= every_s:
            last[:] = [(now, read())]
        return last[0][1]
    return probe


def _evidence(action: Action, obs: Observation) -> dict[str, Any]:
    return {
        "action": action.kind,
        "target_weights": action.weights.model_dump() if action.weights else None,
        "weights": obs.weights.model_dump() if obs.weights else None,
        "error": obs.error,
        "internal": obs.internal or None,
        "gates": {n: {**asdict(g), "verdict": g.verdict.value} for n, g in obs.gates.items()},
        **dict(obs.evidence),
    }
