"""One gate shape: the :class:`Gate` protocol, :class:`GateResult`, and the one combiner.

Every gate, whatever it measures (seeded canary requests, live Prometheus metrics, a capability
snapshot, GPU utilization samples), ends as a :class:`GateResult`; the canary combines its
gates with :func:`combine` and the state machine (``rollout.machine``) combines an analysis's
gates with the same function, so one precedence holds everywhere. Which gate reads which
measurement, and how, is :mod:`gates.registry`'s business.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gates.verdict import Verdict

__all__ = ["PRECEDENCE", "Gate", "GateResult", "combine"]

#: Severity, worst first: when gates disagree the first verdict present decides.
PRECEDENCE: tuple[Verdict, ...] = (Verdict.FAIL, Verdict.ERROR, Verdict.NODATA,
                                   Verdict.INCONCLUSIVE, Verdict.CONTINUE, Verdict.PASS)


class Gate(Protocol):
    """A policy gate: what :mod:`gates.registry` needs of any gate spec."""

    @property
    def type(self) -> str:
        """The registry key (``latency``, ``error-rate``, ``capability``, ``utilization``)."""
        ...

    @property
    def name(self) -> str:
        """The gate's name in verdicts, history and reports."""
        ...


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict.

    Attributes:
        verdict: the gate's verdict.
        reason: one human sentence saying why.
        errors: measurement errors behind an ``error`` verdict (queries that failed, reads
            that broke), counted against the gate's error limit.
        samples: requests or samples judged (0 when the gate does not count them).
        evidence: JSON-ready details (parameters, statistics) for the report.
        name: the gate's name where the result travels without its key (the canary's list).
        kind: the gate's type (``latency``, ``error-rate``, ``output``, ...), likewise.
    """

    verdict: Verdict
    reason: str = ""
    errors: int = 0
    samples: int = 0
    evidence: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""
    kind: str = ""

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "type", "verdict", "reason", **evidence}``."""
        return {"name": self.name, "type": self.kind, "verdict": self.verdict.value,
                "reason": self.reason, **self.evidence}


def combine(results: Mapping[str, GateResult] | Sequence[GateResult]) -> tuple[Verdict, str]:
    """The verdict of several gates, and why.

    Precedence, worst first: **fail > error > nodata > inconclusive (continue) > pass**. The
    worst verdict present is the result (``continue``, a sequential test still undecided when
    its run ended, counts as ``inconclusive``); ``pass`` only when every gate passed; no gate
    at all is ``nodata``, never a pass (Flagger #1098: NaN passing). The reason names every
    gate that is not a pass, worst first: ``"name: reason"`` for failures,
    ``"name: verdict: reason"`` for the others.

    What each verdict does to a rollout (``rollout.machine``'s ``_after_analysis``): ``fail``
    always rolls back; ``error``, ``nodata`` and ``inconclusive`` never promote and follow the
    policy's ``rollback.onInconclusive`` (pause for a human, or roll back), except after the
    switch (Verifying), where anything but ``pass`` rolls back. A measurement error becomes an
    ``error`` verdict only past its gate's error limit (see :mod:`gates.registry`).

    Args:
        results: gate name -> result, or results carrying their ``name``.
    """
    named = list(results.items()) if isinstance(results, Mapping) else \
        [(r.name, r) for r in results]
    if not named:
        return Verdict.NODATA, "no gate reported"
    open_ = sorted(((n, r) for n, r in named if r.verdict is not Verdict.PASS),
                   key=lambda item: PRECEDENCE.index(item[1].verdict))
    if not open_:
        return Verdict.PASS, "all gates passed"
    worst = open_[0][1].verdict
    if worst is Verdict.FAIL:
        return worst, "; ".join(f"{n}: {r.reason}" for n, r in open_
                                if r.verdict is Verdict.FAIL)
    verdict = Verdict.INCONCLUSIVE if worst is Verdict.CONTINUE else worst
    return verdict, "; ".join(f"{n}: {r.verdict.value}: {r.reason}" for n, r in open_)
