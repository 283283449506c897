"""The ``MetricProvider`` extension point: live metrics judging gates over a window.

A provider evaluates the gates the registry (:mod:`gates.registry`) says it measures over an
analysis window and returns one :class:`~gates.gate.GateResult` per check. It never raises for
a measurement problem: a failed query is retried up to the provider's error limit, then an
``error`` verdict with the count; an empty or NaN answer is ``nodata`` with the reason (Argo
Rollouts' ``MarkMeasurementError`` habit), so one flaky scrape cannot crash the controller
and can never pass a gate. :class:`rollout.metrics.prometheus.PrometheusProvider` implements
it; the analyzer holds its provider through this protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from gates.gate import Gate, GateResult

__all__ = ["MetricProvider"]


class MetricProvider(Protocol):
    """Evaluates gates from one source of live evidence."""

    def evaluate(self, gates: Sequence[Gate], *, window_seconds: float,
                 blue_offset_seconds: float = 0.0) -> Mapping[str, GateResult]:
        """Verdict per check name for the last ``window_seconds`` (blue's window ending
        ``blue_offset_seconds`` ago); gates it does not measure are left out."""
        ...
