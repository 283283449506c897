"""The gate registry: for each policy gate ``type``, what it measures and how it is judged.

The only place that looks at a gate spec's type. Every consumer (the analyzer, the live
Prometheus gates, the evidence bundles and the HTML report, the CLI, the SD server's admission)
asks this module instead of testing ``isinstance`` or matching names.

A policy gate yields one or more :class:`Check` objects, one per measurement it is judged on:

========================  ===============================================================
``type``                  checks (name: measurement)
========================  ===============================================================
``latency``               ``NAME``: ``canary`` (``source: canary``) or ``prometheus``
                          (``source: prometheus``, live histograms)
``error-rate``            ``NAME``: ``canary``; plus ``NAME-live``: ``prometheus`` (live
                          5xx counters) when the policy has a Prometheus source
``capability``            ``NAME``: ``capability`` (each green instance's snapshot)
``utilization``           ``NAME``: ``utilization`` (GPU samples over the window)
========================  ===============================================================

``NAME-live`` is the visible name of an error-rate gate's live check (history, reports and
notifications show it as before); it is made here, by :func:`checks`, and nowhere else.

A policy's ``spec.matrix`` (not a ``gates[]`` block) adds two admission checks,
:data:`MATRIX_CHECKS`, judged by :mod:`gates.matrix`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, Protocol, cast

from pydantic import BaseModel

from gates.capability.spec import CapabilityRequirements
from gates.error_rate import ErrorRateGateSpec
from gates.gate import Gate, GateResult
from gates.latency import LatencyGateSpec
from gates.matrix import MATRIX_GATE, MATRIX_NODES_GATE
from gates.utilization.floor import UtilizationRequirements

__all__ = [
    "LIVE_SUFFIX",
    "MATRIX_CHECKS",
    "REGISTRY",
    "CanaryGates",
    "Check",
    "GateType",
    "LiveMetrics",
    "Measurement",
    "canary_gates",
    "capability_gates",
    "check_named",
    "checks",
    "evaluate_live",
    "recorded_latency_gates",
    "utilization_gates",
]

#: Suffix of the name of an error-rate gate's live (Prometheus) check.
LIVE_SUFFIX = "-live"


class Measurement(StrEnum):
    """What a check is judged on."""

    CANARY = "canary"            # seeded canary requests (gates.canary)
    LIVE = "prometheus"          # live traffic metrics from Prometheus
    CAPABILITY = "capability"    # each green instance's /capabilities snapshot, at admission
    UTILIZATION = "utilization"  # GPU utilization samples over the analysis window


@dataclass(frozen=True)
class Check:
    """One verdict a policy gate yields from one measurement.

    Attributes:
        name: the verdict's name (history, report): the gate's, or ``NAME-live``.
        gate: the policy's gate spec.
        measurement: what it is judged on.
        method: one line for the report saying how it is judged.
    """

    name: str
    gate: Gate
    measurement: Measurement
    method: str

    def parameters(self) -> dict[str, Any]:
        """The gate's parameters as the policy states them (JSON-ready; for reports)."""
        model = cast(BaseModel, self.gate)  # every registered spec is a pydantic model
        return model.model_dump(mode="json", exclude={"name", "type"})


class LiveMetrics(Protocol):
    """A live-metrics source (the Prometheus provider) judging one gate over a window."""

    def latency(self, gate: LatencyGateSpec, window: float) -> GateResult:
        """Live latency quantile ratio, green over blue."""
        ...

    def error_rate(self, gate: ErrorRateGateSpec, window: float) -> GateResult:
        """Live 5xx rate of green."""
        ...


@dataclass(frozen=True)
class GateType:
    """A registry entry.

    Attributes:
        spec: the gate spec class of this ``type``.
        checks: the gate's checks, given whether live metrics (Prometheus) are configured.
        live: how the gate is judged on live metrics (for its ``prometheus`` check).
    """

    spec: type[Any]
    checks: Callable[[Any, bool], tuple[Check, ...]]
    live: Callable[[Any, LiveMetrics, float], GateResult] | None = None


def _latency_checks(g: LatencyGateSpec, live: bool) -> tuple[Check, ...]:
    if g.source == "prometheus":
        return (Check(g.name, g, Measurement.LIVE,
                      "live latency quantile ratio from Prometheus histograms"),)
    return (Check(g.name, g, Measurement.CANARY,
                  f"{g.method} latency test on seeded canary samples"),)


def _error_rate_checks(g: ErrorRateGateSpec, live: bool) -> tuple[Check, ...]:
    canary = Check(g.name, g, Measurement.CANARY,
                   "anytime-valid error-rate e-test on canary requests")
    if not live:
        return (canary,)
    return canary, Check(g.name + LIVE_SUFFIX, g, Measurement.LIVE,
                         "live 5xx rate from Prometheus counters")


def _capability_checks(g: CapabilityRequirements, live: bool) -> tuple[Check, ...]:
    return (Check(g.name, g, Measurement.CAPABILITY,
                  "capability requirements checked on each green instance's snapshot"),)


def _utilization_checks(g: UtilizationRequirements, live: bool) -> tuple[Check, ...]:
    return (Check(g.name, g, Measurement.UTILIZATION,
                  f"{g.statistic} GPU utilization of every GPU against a floor"),)


#: The registry, keyed by the policy's gate ``type``.
REGISTRY: Mapping[str, GateType] = {
    "latency": GateType(LatencyGateSpec, _latency_checks,
                        live=lambda g, m, w: m.latency(g, w)),
    "error-rate": GateType(ErrorRateGateSpec, _error_rate_checks,
                           live=lambda g, m, w: m.error_rate(g, w)),
    "capability": GateType(CapabilityRequirements, _capability_checks),
    "utilization": GateType(UtilizationRequirements, _utilization_checks),
}


#: Admission checks of ``spec.matrix``: verdict name -> how it is judged (for reports).
MATRIX_CHECKS: Mapping[str, str] = {
    MATRIX_GATE: "each green instance's capability snapshot against spec.matrix (version pins "
                 "are prefixes)",
    MATRIX_NODES_GATE: "each green pod's node against spec.matrix by its GPU Feature Discovery "
                       "labels (Kubernetes)",
}


def _entry(gate: Gate) -> GateType:
    entry = REGISTRY.get(gate.type)
    if entry is None or not isinstance(gate, entry.spec):
        raise ValueError(f"gate {gate.name!r}: no gate type {gate.type!r} in the registry "
                         f"(known: {', '.join(REGISTRY)})")
    return entry


def checks(gates: Iterable[Gate], *, live: bool,
           measurement: Measurement | None = None) -> tuple[Check, ...]:
    """Every check of ``gates`` (of one ``measurement`` if given), in policy order.

    Args:
        live: whether the policy has a live-metrics source (``spec.metrics.prometheus``).

    Raises:
        ValueError: a gate whose ``type`` is not registered.
    """
    out = (c for g in gates for c in _entry(g).checks(g, live))
    return tuple(c for c in out if measurement is None or c.measurement is measurement)


def check_named(gates: Iterable[Gate], name: str, *, live: bool) -> Check | None:
    """The check whose verdict is called ``name`` (``NAME-live`` included), if any."""
    return next((c for c in checks(gates, live=live) if c.name == name), None)


def evaluate_live(check: Check, metrics: LiveMetrics, window_s: float) -> GateResult:
    """Judge a ``prometheus`` check on ``metrics`` over the last ``window_s`` seconds.

    Raises:
        ValueError: ``check`` is not a live check.
    """
    judge = _entry(check.gate).live
    if check.measurement is not Measurement.LIVE or judge is None:
        raise ValueError(f"{check.name} is not judged on live metrics")
    return judge(check.gate, metrics, window_s)


class CanaryGates(NamedTuple):
    """The gates the seeded canary judges."""

    latency: tuple[LatencyGateSpec, ...]
    error_rate: ErrorRateGateSpec | None

    @property
    def names(self) -> tuple[str, ...]:
        """The names of these gates (none: the policy gives the canary nothing to judge)."""
        errors = (self.error_rate.name,) if self.error_rate is not None else ()
        return (*(g.name for g in self.latency), *errors)


def canary_gates(gates: Sequence[Gate]) -> CanaryGates:
    """The canary's latency gates (``source: canary``) and its error-rate gate (the first)."""
    judged = [c.gate for c in checks(gates, live=False, measurement=Measurement.CANARY)]
    latency = tuple(g for g in judged if isinstance(g, LatencyGateSpec))
    errors = [g for g in judged if isinstance(g, ErrorRateGateSpec)]
    return CanaryGates(latency, errors[0] if errors else None)


def capability_gates(gates: Iterable[Gate]) -> tuple[CapabilityRequirements, ...]:
    """The gates judged on capability snapshots."""
    return tuple(c.gate for c in checks(gates, live=False, measurement=Measurement.CAPABILITY)
                 if isinstance(c.gate, CapabilityRequirements))


def utilization_gates(gates: Iterable[Gate]) -> tuple[UtilizationRequirements, ...]:
    """The gates judged on GPU utilization samples."""
    return tuple(c.gate for c in checks(gates, live=False, measurement=Measurement.UTILIZATION)
                 if isinstance(c.gate, UtilizationRequirements))


def recorded_latency_gates(recorded: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The latency gates among a canary run's recorded gate results (``GateResult.to_dict``)."""
    return [g for g in recorded if g.get("type") == "latency"]
