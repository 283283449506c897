"""The ``MetricProvider`` extension point.

A provider evaluates the gates it can measure over an analysis window and returns one
:class:`~rollout.machine.GateResult` per gate. It never raises for a measurement problem: a
failed query is an ``error`` verdict with a count, an empty or NaN answer is ``nodata`` with
the reason (Argo Rollouts' ``MarkMeasurementError`` habit), so one flaky scrape cannot crash
the controller and can never pass a gate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from rollout.machine import GateResult

__all__ = ["MetricProvider"]


class MetricProvider(Protocol):
    """Evaluates gates from one source of evidence."""

    def evaluate(self, gates: Sequence[Any], *, window_seconds: float) -> Mapping[str, GateResult]:
        """Verdict per gate name for the last ``window_seconds``; gates it cannot measure are
        left out of the result."""
