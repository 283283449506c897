"""What a canary run reports: progress snapshots while it runs, and its result."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from gates.canary.output_check import OutputCheckResult
from gates.canary.records import Arm
from gates.gate import GateResult
from gates.verdict import Verdict

__all__ = ["CanaryProgress", "CanaryResult", "InstanceOutcome", "StopReason"]

StopReason = Literal["decided", "budget", "deadline", "cancelled"]


@dataclass(frozen=True)
class CanaryProgress:
    """A snapshot for live displays, taken after each finished slice."""

    slices: int
    budget: int
    requests: dict[Arm, int]
    errors: dict[Arm, int]
    p95: dict[Arm, float]
    judge: str
    elapsed_s: float


@dataclass(frozen=True)
class InstanceOutcome:
    """What the canary measured on one serving instance of one arm.

    The keys of :meth:`to_dict` are a contract: the controller copies them into the
    RolloutPolicy's ``status.instances`` (``rollout.k8s.resource.InstanceStatus``).

    Attributes:
        arm: ``blue`` or ``green``.
        url: the instance's base URL.
        pod, node: where it runs (``""`` where the platform does not know).
        n: judged latencies (requests of complete slices).
        p50, p95: of those, in seconds (``None`` without any).
        errors: its failed measured requests.
        verdict: green: ``pass``, ``fail``, ``inconclusive``, ``nodata``...; blue:
            ``baseline`` (blue is what green is compared with, never judged).
    """

    arm: Arm
    url: str
    pod: str
    node: str
    n: int
    p50: float | None
    p95: float | None
    errors: int
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        """``{"arm", "url", "pod", "node", "n", "p50", "p95", "errors", "verdict"}``."""
        return {"arm": self.arm, "url": self.url, "pod": self.pod, "node": self.node,
                "n": self.n, "p50": _rounded(self.p50), "p95": _rounded(self.p95),
                "errors": self.errors, "verdict": self.verdict}


def _rounded(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(v, 6)


@dataclass(frozen=True)
class CanaryResult:
    """The outcome of a canary run.

    Attributes:
        verdict: combined verdict of the gating checks (:func:`gates.gate.combine`).
        reason: why, naming the deciding gate.
        gates: each gating check's result.
        output: the output check (also when it only reports).
        stopped_by: ``decided``, ``budget``, ``deadline`` or ``cancelled`` (``should_stop``
            returned a reason; ``reason`` starts with it).
        slices: ``{"sent", "judged", "excluded", "cancelled"}``.
        requests: measured requests per arm in consumed slices (warm-up and cancelled ones
            not included).
        errors: ``{arm: {kind: count}}``.
        latencies: judged latencies per arm, in the order the judge consumed them.
        elapsed_s: wall time of the run, warm-up included.
        records: paths of the record files, when written.
        instances: per serving instance of each arm (blue's first), what was measured there.
    """

    verdict: Verdict
    reason: str
    gates: tuple[GateResult, ...]
    output: OutputCheckResult
    stopped_by: StopReason
    slices: dict[str, int]
    requests: dict[Arm, int]
    errors: dict[str, dict[str, int]]
    latencies: dict[Arm, NDArray[np.float64]]
    elapsed_s: float
    records: dict[str, str] | None = None
    instances: tuple[InstanceOutcome, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (per-arm latency summaries are the caller's to add)."""
        o = self.output
        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "stopped_by": self.stopped_by,
            "elapsed_s": round(self.elapsed_s, 3),
            "slices": self.slices,
            "requests": self.requests,
            "errors": self.errors,
            "gates": [g.to_dict() for g in self.gates],
            "output_check": {
                "mode": o.mode, "verdict": o.verdict.value, "compared": o.compared,
                "identical": o.identical, "mismatches": o.mismatches,
                "undecidable": o.undecidable, "first_mismatch": o.first_mismatch,
                "broken": o.broken, "first_broken": o.first_broken,
                "worst_distance": None if math.isnan(o.worst_distance) else o.worst_distance,
                "reason": o.reason},
            "records": self.records,
            "instances": [i.to_dict() for i in self.instances],
        }
