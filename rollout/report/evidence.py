"""Evidence bundles: one JSON file per controller decision, next to the rollout's state.

Why a file per decision when the store already keeps each transition's evidence: a bundle is
self-describing (which data went in, which method with which parameters, what came out) and
can be attached to a ticket or archived without the SQLite store or this code. It is written
by :class:`EvidenceWriter`, a ``Controller.on_transition`` callback, *after* the store has
persisted the transition, so a bundle never describes a decision the store does not hold; a
bundle that cannot be written is logged and never stops the rollout.

Layout: ``<state>/evidence/<name>/<generation:06d>-<from>-<to>.json``. Generations increase
across runs of the same name, so a later run never overwrites an earlier run's bundles.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gates.registry import MATRIX_CHECKS, Check, checks
from rollout.machine import Observation, RolloutStatus

if TYPE_CHECKING:
    from gates.utilization.floor import UtilizationRequirements, UtilizationResult
    from gates.utilization.samples import UtilizationSamples
    from rollout.policy.models import RolloutPolicy

__all__ = ["BUNDLE_KIND", "EvidenceWriter", "decision_bundle", "utilization_evidence"]

BUNDLE_KIND = "DecisionEvidence"
_log = logging.getLogger("rollout.evidence")

#: Gates the analyzer runs on its own, without a policy block.
_BUILTIN_METHODS = {
    "green-ready": "every green instance answers /readyz and does not report a degraded path "
                   "in /capabilities",
    "execution-path": "per-module execution path (backend, device, dtype, attention kernels, "
                      "memory format, compilation, ORT providers) equal to blue's",
    "engines": "every TensorRT engine of spec.admission.engineManifest present with its hash "
               "and built for each green instance's TensorRT and compute capability",
    "image": "green's declared image digest audited against spec.image (archive digest must "
             "match) and, with requireSignature, signed for its identity by a trusted key",
    **MATRIX_CHECKS,
}
# Keys of a canary gate's evidence that are its parameters (the rest are its results).
_PARAMETER_KEYS = frozenset({"quantile", "max_ratio", "alpha", "ceiling_seconds", "max_rate"})


def _checks(policy: RolloutPolicy | None) -> dict[str, Check]:
    """Verdict name -> the registry's check (an error-rate gate's live one is ``NAME-live``)."""
    if policy is None:
        return {}
    live = policy.spec.metrics.prometheus is not None
    return {c.name: c for c in checks(policy.spec.gates, live=live)}


def _method(name: str, check: Check | None) -> str:
    if name in _BUILTIN_METHODS:
        return _BUILTIN_METHODS[name]
    if check is None:
        return "unknown (no policy given to the evidence writer)"
    return check.method


def decision_bundle(prev: RolloutStatus, nxt: RolloutStatus, obs: Observation, *,
                    policy: RolloutPolicy | None = None, at: float | None = None) -> dict[str, Any]:
    """The JSON document of one decision: inputs summary, and per gate its method, parameters
    and result."""
    evidence = dict(obs.evidence)
    canary: dict[str, Any] = dict(evidence.pop("canary", None) or {})
    canary_gates = {g["name"]: g for g in canary.pop("gates", [])}
    known = _checks(policy)
    gates: dict[str, Any] = {}
    for name, g in obs.gates.items():
        check = known.get(name)
        details = {**g.evidence, **canary_gates.get(name, {})}
        params = {k: details.pop(k) for k in list(details) if k in _PARAMETER_KEYS}
        if check is not None:
            params = {**check.parameters(), **params}
        for k in ("name", "type", "verdict", "reason", "method"):
            details.pop(k, None)
        gates[name] = {
            "method": _method(name, check),
            "parameters": params,
            "result": {"verdict": g.verdict.value, "reason": g.reason, "errors": g.errors,
                       "samples": g.samples, **details},
        }
    inputs: dict[str, Any] = {**evidence}
    if canary:
        canary.pop("verdict", None)
        canary.pop("reason", None)
        inputs["canary"] = canary
    return {
        "apiVersion": "rollout-gates.dev/v1alpha1",
        "kind": BUNDLE_KIND,
        "rollout": nxt.name,
        "generation": nxt.generation,
        "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at or time.time())),
        "transition": {"from": prev.phase.value, "to": nxt.phase.value, "step": prev.step,
                       "next_step": nxt.step, "reason": nxt.reason,
                       "weights": nxt.weights.model_dump() if nxt.weights else None},
        "error": obs.error,
        "inputs": inputs,
        "gates": gates,
    }


class EvidenceWriter:
    """``Controller.on_transition`` callback writing one bundle per decision.

    Args:
        state_dir: the rollout's state directory; bundles go to ``evidence/<name>/`` in it.
        policy: the rollout's policy, to name each gate's method and full parameters.
        clock: wall clock (tests).
    """

    def __init__(self, state_dir: str | Path, *, policy: RolloutPolicy | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = Path(state_dir) / "evidence"
        self.policy = policy
        self.clock = clock

    def path_for(self, prev: RolloutStatus, nxt: RolloutStatus) -> Path:
        """Where the bundle of the transition ``prev -> nxt`` goes."""
        return (self.root / nxt.name /
                f"{nxt.generation:06d}-{prev.phase.value}-{nxt.phase.value}.json")

    def __call__(self, prev: RolloutStatus, nxt: RolloutStatus, obs: Observation) -> None:
        path = self.path_for(prev, nxt)
        try:
            doc = decision_bundle(prev, nxt, obs, policy=self.policy, at=self.clock())
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(doc, indent=2, default=str, allow_nan=False) + "\n",
                           encoding="utf-8")
            os.replace(tmp, path)
        except (OSError, ValueError, TypeError) as e:
            _log.warning("evidence bundle %s not written: %s", path, e)


def utilization_evidence(gate: UtilizationRequirements, samples: UtilizationSamples,
                         result: UtilizationResult) -> dict[str, Any]:
    """A utilization gate's samples for the transition's evidence (what the report plots).

    The analyzer records it under ``evidence["utilization"][gate.name]``.
    """
    return {
        "metric": samples.metric, "source": samples.source, "error": samples.error,
        "floor_percent": gate.floor_percent, "statistic": gate.statistic,
        "interval_seconds": gate.interval_seconds, "verdict": result.verdict.value,
        "gpus": {g.gpu: list(g.utilization_pct) for g in samples.gpus},
        "below_floor": list(result.below_floor),
    }
