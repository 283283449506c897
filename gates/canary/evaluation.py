"""Turning finished slices into gate verdicts: the canary's judging, free of any I/O.

Each finished slice (one green request and ``K`` blue ones, same prompt and seed) is consumed
once, in completion order, by:

* every **latency gate**. With ``method: sequential`` (the default) the slice goes into a
  :class:`~gates.stats.sequential.SequentialJudge`, which may decide after any slice with its
  false-rollback bound intact. Completion order is a valid order for it: a slice finishes when
  its slowest request does, a symmetric function of the slice, so within-slice exchangeability
  (its null hypothesis) is untouched. Other methods are fixed-sample tests that repeated looks
  would invalidate: they cannot stop the run and judge once, over everything, at the end
  (exactly what ``rollout compare --method ...`` computes from the record files). A gate's
  ``ceilingSeconds`` is checked at the end too: green's quantile's lower confidence bound (one
  sided, level ``1 - alpha``) above the ceiling fails.
* the **error-rate gate**: every green request, failed (any :data:`ERROR_KINDS`, timeouts
  included) or not, goes into :class:`~gates.error_rate.ErrorRateJudge`.
* the **output check** when green and at least one blue returned images.

Which slices feed the latency judges (see :mod:`gates.canary.records` for how they are written):
a *complete* slice, whose requests all answered or timed out; a timeout enters as the time
waited, a lower bound of its latency that still ranks it above every answered request. A slice
with any other failure is left out of the latency judges: a 500 after 5 ms says nothing about
speed, and pairing a lone blue with nothing would break the judge's slices. It is never a quiet
pass: green's failures fail the error-rate gate, and left-out slices are counted and reported;
if no slice at all is complete the latency gates say ``nodata``.

The run may stop when a gating check has failed, or when every gate has decided (the output
check, which can only fail, never holds a run back).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gates.canary.output_check import OutputCheck, OutputCheckResult, OutputCheckSpec
from gates.canary.records import ARMS, ERROR_KINDS, Arm, RequestRecord
from gates.error_rate import ErrorRateGateSpec, ErrorRateJudge
from gates.gate import GateResult
from gates.latency import LatencyGateSpec
from gates.stats.quantiles import quantile_ci
from gates.stats.sequential import SequentialJudge
from gates.verdict import Verdict

__all__ = ["CanaryEvaluation", "SliceOutcome"]


@dataclass(frozen=True)
class SliceOutcome:
    """A finished slice: the green request and its ``K`` blue partners."""

    number: int
    green: RequestRecord
    blues: tuple[RequestRecord, ...]

    @property
    def records(self) -> tuple[RequestRecord, ...]:
        """Green first, then the blues."""
        return (self.green, *self.blues)


class _LatencyGate:
    """One latency gate: a streaming judge for ``sequential``, a final test for the others."""

    def __init__(self, spec: LatencyGateSpec, blue_per_green: int) -> None:
        self.spec = spec
        self.k = blue_per_green
        self.judge = SequentialJudge(quantile=spec.quantile, alpha=spec.alpha,
                                     blue_per_green=blue_per_green, max_ratio=spec.limit) \
            if spec.method == "sequential" else None

    @property
    def decided(self) -> bool:
        return self.judge is not None and self.judge.decision.decided

    @property
    def failed(self) -> bool:
        return self.judge is not None and self.judge.decision.verdict is Verdict.FAIL

    def observe(self, green: float, blue: Sequence[float]) -> None:
        if self.judge is not None:
            self.judge.observe(green, blue)

    def state(self) -> str:
        """A short label for progress displays."""
        if self.judge is None:
            return f"{self.spec.method}: judged at the end"
        d = self.judge.decision
        return f"{d.verdict.value} E={d.e_value:.3g}/{d.threshold:.3g}"

    def result(self, blue: NDArray[np.float64], green: NDArray[np.float64]) -> GateResult:
        s = self.spec
        details: dict[str, Any] = {"method": s.method, "quantile": s.quantile,
                                   "max_ratio": s.max_ratio, "tolerance": s.tolerance,
                                   "limit": s.limit, "alpha": s.alpha}
        if green.size == 0 or blue.size == 0:
            return GateResult(Verdict.NODATA, "no complete slice: nothing to compare",
                              evidence=details, name=s.name, kind="latency")
        if self.judge is not None:
            d = self.judge.decision
            verdict: Verdict = Verdict.INCONCLUSIVE if d.verdict is Verdict.CONTINUE else d.verdict
            reason = d.reason if d.decided else f"stopped undecided: {d.reason}"
            details.update(decided_at=d.slices if d.decided else None, slices=d.slices,
                           e_value=_finite(d.e_value), threshold=d.threshold,
                           futility_e=_finite(d.futility_e),
                           futility_threshold=d.futility_threshold,
                           blue_quantile=_finite(d.blue_quantile))
        else:
            from gates.compare import compare  # imports every method: only when one is used

            c = compare(blue, green, method=s.method, quantile=s.quantile,
                        max_ratio=s.max_ratio, tolerance=s.tolerance, alpha=s.alpha,
                        blue_per_green=self.k)
            verdict, reason = c.verdict, c.reason
        if s.ceiling_seconds is not None and verdict is not Verdict.FAIL:
            est = quantile_ci(green, s.quantile, conf_level=1 - 2 * s.alpha, arm="green")
            details["ceiling_seconds"] = s.ceiling_seconds
            if est.ci_low > s.ceiling_seconds:
                verdict = Verdict.FAIL
                reason = (f"green's P{s.quantile * 100:g} is above the ceiling of "
                          f"{s.ceiling_seconds:g} s (lower bound {est.ci_low:.3f} s at "
                          f"{1 - s.alpha:.0%} confidence)")
        return GateResult(verdict, reason, samples=int(green.size), evidence=details, name=s.name,
                          kind="latency")


class CanaryEvaluation:
    """Consume finished slices; say when the run may stop and what every gate concluded.

    Args:
        blue_per_green: ``K``, blue requests per slice.
        latency_gates: one latency judge each (each keeps its own ``alpha``).
        error_gate: green's error-rate gate.
        output_check: how images must compare (``report`` never gates).
        error_alpha: the error-rate gate's false-fail bound.

    Raises:
        ValueError: ``blue_per_green < 1`` or a gate parameter out of range.
    """

    def __init__(self, *, blue_per_green: int = 1,
                 latency_gates: Sequence[LatencyGateSpec] = (LatencyGateSpec(),),
                 error_gate: ErrorRateGateSpec | None = None,
                 output_check: OutputCheckSpec | None = None,
                 error_alpha: float = 0.01) -> None:
        if blue_per_green < 1:
            raise ValueError(f"blue_per_green must be >= 1, got {blue_per_green}")
        self.blue_per_green = blue_per_green
        self._latency = [_LatencyGate(s, blue_per_green) for s in latency_gates]
        self.error_spec = error_gate if error_gate is not None else ErrorRateGateSpec()
        self._errors = ErrorRateJudge.from_spec(self.error_spec, alpha=error_alpha)
        self._output = OutputCheck(output_check)
        self.latencies: dict[Arm, list[float]] = {a: [] for a in ARMS}
        self.requests: dict[Arm, int] = dict.fromkeys(ARMS, 0)
        self.error_counts: dict[Arm, Counter[str]] = {a: Counter() for a in ARMS}
        self.slices_judged = 0
        self.slices_excluded = 0

    def consume(self, outcome: SliceOutcome) -> tuple[RequestRecord, ...]:
        """Judge one finished slice; return its records with ``ok``/``excluded`` filled in.

        Raises:
            ValueError: the slice does not hold exactly ``K`` blue requests.
        """
        if len(outcome.blues) != self.blue_per_green:
            raise ValueError(f"slice {outcome.number} has {len(outcome.blues)} blue requests, "
                             f"expected {self.blue_per_green}")
        for r in outcome.records:
            self.requests[r.arm] += 1
            if r.error is not None:
                self.error_counts[r.arm][r.error] += 1
        self._errors.observe(outcome.green.error is not None)
        with_images = [b.images for b in outcome.blues if b.images]
        if outcome.green.images and with_images:
            self._output.observe(outcome.number, outcome.green.images, with_images)
        complete = all(r.error in (None, "timeout") for r in outcome.records)
        if not complete:
            self.slices_excluded += 1
            return tuple(r if r.error is not None else replace(r, excluded="slice-error")
                         for r in outcome.records)
        self.slices_judged += 1
        blue = [b.latency_s for b in outcome.blues]
        for gate in self._latency:
            gate.observe(outcome.green.latency_s, blue)
        self.latencies["green"].append(outcome.green.latency_s)
        self.latencies["blue"].extend(blue)
        return tuple(replace(r, ok=True) for r in outcome.records)

    @property
    def output(self) -> OutputCheckResult:
        """The output check's state."""
        return self._output.result

    @property
    def finished(self) -> bool:
        """Whether more slices could change nothing: a gating failure, or every gate decided."""
        failed = any(g.failed for g in self._latency) \
            or self._errors.result.verdict is Verdict.FAIL \
            or (self.output.gating and self.output.verdict is Verdict.FAIL)
        return failed or (all(g.decided for g in self._latency)
                          and self._errors.result.verdict is Verdict.PASS)

    def latency_state(self) -> str:
        """The latency judges' states, for progress displays."""
        return "; ".join(f"{g.spec.name} {g.state()}" for g in self._latency)

    def gate_results(self) -> list[GateResult]:
        """Every gating check's verdict now (undecided ones as ``inconclusive``)."""
        blue = np.asarray(self.latencies["blue"], dtype=np.float64)
        green = np.asarray(self.latencies["green"], dtype=np.float64)
        out = [g.result(blue, green) for g in self._latency]
        e = self._errors.result
        verdict = Verdict.INCONCLUSIVE if e.verdict is Verdict.CONTINUE else e.verdict
        out.append(GateResult(verdict, e.reason, samples=e.requests, name=self.error_spec.name,
                              kind="error-rate", evidence={
            "max_rate": e.max_rate, "requests": e.requests, "errors": e.errors,
            "rate": _finite(e.rate), "decided_at": e.decided_at,
            "fail_e": _finite(e.fail_e), "fail_threshold": e.fail_threshold,
            "pass_e": _finite(e.pass_e), "pass_threshold": e.pass_threshold}))
        o = self.output
        if o.gating:
            out.append(GateResult(o.verdict, o.reason, name="output", kind="output"))
        return out

    def errors_by_kind(self) -> dict[str, dict[str, int]]:
        """``{arm: {kind: count}}`` with every kind present (zeros included)."""
        return {a: {k: self.error_counts[a][k] for k in ERROR_KINDS} for a in ARMS}


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None
