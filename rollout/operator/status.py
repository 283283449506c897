"""What the cluster sees of a rollout: the engine's status projected onto ``.status``.

Why a pure function: the controller writes ``.status`` from two places (every transition, as
it happens, and every level-triggered pass, which may find a status written by a previous
leader), and both must produce the same document for the same facts, or GitOps tools would
see the health flap. Nothing here talks to the API.

The decision trail stays in the ConfigMap store; ``.status`` carries the last word of it:
phase, step, the weights read back from the router, per-gate verdicts, per-instance evidence
of the last canary, and the kstatus conditions (see :mod:`rollout.k8s.resource`).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import ValidationError

from gates.gate import combine
from rollout.k8s.resource import (
    CONDITION_TYPES,
    ConditionStatus,
    GateStatus,
    InstanceStatus,
    RolloutPolicyStatus,
)
from rollout.machine import Observation, Phase, RolloutStatus

__all__ = ["instances_of", "project", "rfc3339"]

_STALLED = frozenset({Phase.ROLLED_BACK, Phase.ABORTED})


def rfc3339(t: float) -> str:
    """Kubernetes ``Time`` (seconds precision, UTC)."""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def instances_of(evidence: Mapping[str, Any]) -> list[InstanceStatus] | None:
    """The per-instance canary evidence (``instances``) found in an observation's evidence,
    at its top level or in one of its sections (the canary's); None when it has none."""
    found = evidence.get("instances")
    if not isinstance(found, list):
        found = next((v["instances"] for v in evidence.values()
                      if isinstance(v, Mapping) and isinstance(v.get("instances"), list)), None)
    if found is None:
        return None
    out = []
    for item in found:
        if not isinstance(item, Mapping):
            continue
        try:
            out.append(InstanceStatus.model_validate(
                {k: item[k] for k in InstanceStatus.model_fields if k in item}))
        except ValidationError:
            continue  # evidence of a shape we do not know is not worth a failed status write
    return out


def _conditions(status: RolloutStatus | None, generation: int,
                previous: RolloutPolicyStatus | None, now: str) -> list[ConditionStatus]:
    current = status is not None and status.spec_generation == generation
    phase = status.phase if status is not None else Phase.PENDING
    running = status is None or (current and not status.terminal)
    wanted: dict[str, tuple[bool, str, str]] = {
        "Reconciling": (running, phase.value if running else "Idle",
                        status.reason if status is not None and running else ""),
        "Stalled": (current and phase in _STALLED, phase.value if current else "Idle",
                    status.reason if status is not None and current and phase in _STALLED
                    else ""),
        "Ready": (current and phase is Phase.PROMOTED,
                  phase.value if current else "NewGeneration",
                  "" if current else f"generation {generation} not rolled out yet"),
    }
    before: dict[str, ConditionStatus] = {c.type: c for c in (previous.conditions
                                                              if previous else [])}
    out = []
    for kind in CONDITION_TYPES:
        true, reason, message = wanted[kind]
        value: Literal["True", "False"] = "True" if true else "False"
        old = before.get(kind)
        since = old.last_transition_time if old is not None and old.status == value else now
        out.append(ConditionStatus(type=kind, status=value, reason=reason,
                                   message=message[:32768], last_transition_time=since,
                                   observed_generation=generation))
    return out


def project(status: RolloutStatus | None, *, generation: int, history_config_map: str,
            previous: RolloutPolicyStatus | None = None, obs: Observation | None = None,
            clock: Callable[[], float]) -> RolloutPolicyStatus:
    """``.status`` for the engine's ``status`` of a RolloutPolicy at ``generation``.

    ``previous`` (the status the object has now) keeps what a pass without an observation
    cannot know again: gate reasons, per-instance evidence, start and transition times.
    ``obs`` (the observation of the transition being mirrored) refreshes them.
    """
    now = rfc3339(clock())
    same_run = (previous is not None and status is not None
                and previous.observed_generation == status.spec_generation
                and previous.attempt == status.attempt and previous.started_at != "")
    keep = previous if same_run else None
    gates = list(keep.gates) if keep else []
    instances = list(keep.instances) if keep else []
    verdict = keep.verdict if keep else ""
    if obs is not None and obs.gates:
        gates = [GateStatus(name=n, verdict=g.verdict.value, reason=g.reason[:4096])
                 for n, g in obs.gates.items()]
        verdict = combine(obs.gates)[0].value
    if obs is not None:
        instances = instances_of(obs.evidence) or instances
    if status is None:
        return RolloutPolicyStatus(phase=Phase.PENDING.value, history_config_map=history_config_map,
                                   conditions=_conditions(None, generation, previous, now))
    weights = status.weights
    return RolloutPolicyStatus(
        observed_generation=status.spec_generation,
        phase=status.phase.value,
        awaiting_promotion=(status.phase is Phase.PAUSED
                            and status.paused_from is Phase.PROMOTING),
        step=status.step,
        steps=len(status.plan.weights),
        blue_weight=weights.blue if weights else None,
        green_weight=weights.green if weights else None,
        verdict=verdict,
        reason=status.reason[:4096],
        internal_error=status.internal_error,
        attempt=status.attempt,
        gates=gates,
        instances=instances,
        conditions=_conditions(status, generation, previous, now),
        history_config_map=history_config_map,
        started_at=keep.started_at if keep else now,
        finished_at=(keep.finished_at if keep and keep.finished_at else now)
        if status.terminal else "",
    )
