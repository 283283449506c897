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

**A colour is a fleet** (:mod:`gates.canary.fleet`). With more than one green instance every
latency gate also runs one judge per green instance, fed with that instance's slices (each
paired, as always, with its slice's ``K`` blue requests, drawn from blue's pool), and the
error-rate gate one fail-only judge per green instance; the levels are shared out
(Bonferroni, :mod:`gates.stats.fleet`). A gate then fails when its pooled judge or any
instance's judge fails, naming the instance (pod and node); it passes only when the pooled
judge and every instance's judge passed, so an instance with too few slices holds the gate at
``inconclusive`` (or ``nodata``), never a pass. Per-instance counts, latencies and verdicts are
kept for the evidence (:meth:`CanaryEvaluation.instance_outcomes`).

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from gates.canary.fleet import Instance
from gates.canary.outcome import InstanceOutcome
from gates.canary.output_check import OutputCheck, OutputCheckResult, OutputCheckSpec
from gates.canary.records import ARMS, ERROR_KINDS, Arm, RequestRecord
from gates.error_rate import ErrorRateGateSpec, ErrorRateJudge, ErrorRateResult
from gates.gate import PRECEDENCE, GateResult
from gates.latency import LatencyGateSpec
from gates.stats.fleet import (
    FleetLevels,
    InstanceVerdict,
    fleet_levels,
    fleet_verdict,
    instance_verdict,
    min_samples,
    slowest_instance,
    summarize_instance,
)
from gates.stats.quantiles import quantile_ci
from gates.stats.sequential import SequentialJudge
from gates.verdict import Verdict

if TYPE_CHECKING:
    from gates.compare import Comparison

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


Latencies = NDArray[np.float64]


class _LatencyGate:
    """One latency gate: a streaming judge for ``sequential``, a final test for the others;
    pooled, plus one per green instance when green is a fleet (module docstring)."""

    def __init__(self, spec: LatencyGateSpec, blue_per_green: int,
                 green: Sequence[Instance]) -> None:
        self.spec = spec
        self.k = blue_per_green
        self.levels: FleetLevels = fleet_levels(spec.alpha, max(1, len(green)))
        self.judge = self._judge(self.levels.pooled_alpha)
        self.instances: dict[Instance, SequentialJudge | None] = {
            i: self._judge(self.levels.instance_alpha) for i in green} \
            if self.levels.per_instance else {}

    def _judge(self, alpha: float) -> SequentialJudge | None:
        s = self.spec
        return SequentialJudge(quantile=s.quantile, alpha=alpha, blue_per_green=self.k,
                               max_ratio=s.limit) if s.method == "sequential" else None

    def _judges(self) -> list[SequentialJudge]:
        return [j for j in (self.judge, *self.instances.values()) if j is not None]

    @property
    def decided(self) -> bool:
        judges = self._judges()
        return bool(judges) and all(j.decision.decided for j in judges)

    @property
    def failed(self) -> bool:
        return any(j.decision.verdict is Verdict.FAIL for j in self._judges())

    def observe(self, green: float, blue: Sequence[float], instance: Instance | None) -> None:
        if self.judge is not None:
            self.judge.observe(green, blue)
        own = self.instances.get(instance) if instance is not None else None
        if own is not None:
            own.observe(green, blue)

    def state(self) -> str:
        """A short label for progress displays."""
        if self.judge is None:
            return f"{self.spec.method}: judged at the end"
        d = self.judge.decision
        text = f"{d.verdict.value} E={d.e_value:.3g}/{d.threshold:.3g}"
        if self.instances:
            done = sum(1 for j in self.instances.values() if j and j.decision.decided)
            text += f" instances {done}/{len(self.instances)} decided"
        return text

    def result(self, blue: Latencies, green: Latencies,
               per_instance: Mapping[Instance, Latencies]) -> tuple[
                   GateResult, dict[Instance, InstanceVerdict]]:
        """The gate's result and each green instance's verdict under it."""
        s = self.spec
        details: dict[str, Any] = {"method": s.method, "quantile": s.quantile,
                                   "max_ratio": s.max_ratio, "tolerance": s.tolerance,
                                   "limit": s.limit, "alpha": s.alpha}
        if green.size == 0 or blue.size == 0:
            return GateResult(Verdict.NODATA, "no complete slice: nothing to compare",
                              evidence=details, name=s.name, kind="latency"), {}
        verdict, reason = self._pooled(blue, green, details)
        if s.ceiling_seconds is not None and verdict is not Verdict.FAIL:
            est = quantile_ci(green, s.quantile, conf_level=1 - 2 * s.alpha, arm="green")
            details["ceiling_seconds"] = s.ceiling_seconds
            if est.ci_low > s.ceiling_seconds:
                verdict = Verdict.FAIL
                reason = (f"green's P{s.quantile * 100:g} is above the ceiling of "
                          f"{s.ceiling_seconds:g} s (lower bound {est.ci_low:.3f} s at "
                          f"{1 - s.alpha:.0%} confidence)")
        if not self.levels.per_instance:
            only = {i: instance_verdict(i.label, int(v.size), verdict, reason)
                    for i, v in per_instance.items()}
            return GateResult(verdict, reason, samples=int(green.size), evidence=details,
                              name=s.name, kind="latency"), only
        verdicts = {i: self._instance(i, blue, per_instance.get(i, np.zeros(0)))
                    for i in self.instances}
        suspect = slowest_instance(blue, {i.label: v for i, v in per_instance.items()
                                          if i in self.instances}, quantile=s.quantile)
        fleet = fleet_verdict(verdict, reason, list(verdicts.values()), suspect=suspect,
                              quantile=s.quantile)
        details.update(levels=self.levels.to_dict(), pooled_verdict=verdict.value,
                       instance_tests=[v.to_dict() for v in verdicts.values()])
        return GateResult(fleet.verdict, fleet.reason, samples=int(green.size),
                          evidence=details, name=s.name, kind="latency"), verdicts

    def _pooled(self, blue: Latencies, green: Latencies,
                details: dict[str, Any]) -> tuple[Verdict, str]:
        if self.judge is not None:
            d = self.judge.decision
            verdict = Verdict.INCONCLUSIVE if d.verdict is Verdict.CONTINUE else d.verdict
            details.update(decided_at=d.slices if d.decided else None, slices=d.slices,
                           e_value=_finite(d.e_value), threshold=d.threshold,
                           futility_e=_finite(d.futility_e),
                           futility_threshold=d.futility_threshold,
                           blue_quantile=_finite(d.blue_quantile))
            return verdict, d.reason if d.decided else f"stopped undecided: {d.reason}"
        c = _compare(self.spec, blue, green, self.k, self.levels.pooled_alpha)
        return c.verdict, c.reason

    def _instance(self, instance: Instance, blue: Latencies,
                  green: Latencies) -> InstanceVerdict:
        """One green instance against blue's pool, at the instance's share of ``alpha``."""
        judge = self.instances.get(instance)
        need = min_samples(self.spec.quantile)
        if judge is not None:
            d = judge.decision
            return instance_verdict(instance.label, int(green.size), d.verdict, d.reason,
                                    needed=1 if d.decided else need)
        if green.size < need:
            return instance_verdict(instance.label, int(green.size), Verdict.CONTINUE, "",
                                    needed=need)
        c = _compare(self.spec, blue, green, None, self.levels.instance_alpha)
        return instance_verdict(instance.label, int(green.size), c.verdict, c.reason,
                                needed=need)


def _compare(spec: LatencyGateSpec, blue: Latencies, green: Latencies, k: int | None,
             alpha: float) -> Comparison:
    """A fixed-sample method over everything (``k``: pairing; ``None``: unpaired samples,
    one instance's latencies against blue's pool)."""
    from gates.compare import compare  # imports every method: only when one is used

    return compare(blue, green, method=spec.method, quantile=spec.quantile,
                   max_ratio=spec.max_ratio, tolerance=spec.tolerance, alpha=alpha,
                   blue_per_green=k or 1)


class CanaryEvaluation:
    """Consume finished slices; say when the run may stop and what every gate concluded.

    Args:
        blue_per_green: ``K``, blue requests per slice.
        latency_gates: one latency judge each (each keeps its own ``alpha``).
        error_gate: green's error-rate gate.
        output_check: how images must compare (``report`` never gates).
        error_alpha: the error-rate gate's false-fail bound.
        fleet: every instance of each arm; with several green instances each is judged on
            its own too (module docstring). Records name their instance
            (:attr:`RequestRecord.instance`).

    Raises:
        ValueError: ``blue_per_green < 1`` or a gate parameter out of range.
    """

    def __init__(self, *, blue_per_green: int = 1,
                 latency_gates: Sequence[LatencyGateSpec] = (LatencyGateSpec(),),
                 error_gate: ErrorRateGateSpec | None = None,
                 output_check: OutputCheckSpec | None = None,
                 error_alpha: float = 0.01,
                 fleet: Mapping[Arm, Sequence[Instance]] | None = None) -> None:
        if blue_per_green < 1:
            raise ValueError(f"blue_per_green must be >= 1, got {blue_per_green}")
        self.blue_per_green = blue_per_green
        self.fleet: dict[Arm, tuple[Instance, ...]] = {
            a: tuple((fleet or {}).get(a, ())) for a in ARMS}
        green = self.fleet["green"]
        self._latency = [_LatencyGate(s, blue_per_green, green) for s in latency_gates]
        self.error_spec = error_gate if error_gate is not None else ErrorRateGateSpec()
        self.error_levels = fleet_levels(error_alpha, max(1, len(green)))
        self._errors = ErrorRateJudge.from_spec(self.error_spec,
                                                alpha=self.error_levels.pooled_alpha)
        self._instance_errors = {
            i: ErrorRateJudge.from_spec(self.error_spec, alpha=self.error_levels.instance_alpha)
            for i in green} if self.error_levels.per_instance else {}
        self._output = OutputCheck(output_check)
        self.latencies: dict[Arm, list[float]] = {a: [] for a in ARMS}
        self.requests: dict[Arm, int] = dict.fromkeys(ARMS, 0)
        self.error_counts: dict[Arm, Counter[str]] = {a: Counter() for a in ARMS}
        #: Per (arm, instance): judged latencies, measured requests, failed ones.
        self.by_instance: dict[tuple[Arm, Instance], list[float]] = {
            (a, i): [] for a in ARMS for i in self.fleet[a]}
        self.instance_requests: Counter[tuple[Arm, Instance]] = Counter()
        self.instance_errors: Counter[tuple[Arm, Instance]] = Counter()
        self._instance_verdicts: dict[Instance, list[InstanceVerdict]] = {}
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
            if r.instance is not None:
                self.instance_requests[r.arm, r.instance] += 1
                self.instance_errors[r.arm, r.instance] += r.error is not None
        green = outcome.green
        self._errors.observe(green.error is not None)
        own = self._instance_errors.get(green.instance) if green.instance else None
        if own is not None:
            own.observe(green.error is not None)
        with_images = [b.images for b in outcome.blues if b.images]
        if green.images and with_images:
            self._output.observe(outcome.number, green.images, with_images)
        complete = all(r.error in (None, "timeout") for r in outcome.records)
        if not complete:
            self.slices_excluded += 1
            return tuple(r if r.error is not None else replace(r, excluded="slice-error")
                         for r in outcome.records)
        self.slices_judged += 1
        blue = [b.latency_s for b in outcome.blues]
        for gate in self._latency:
            gate.observe(green.latency_s, blue, green.instance)
        self.latencies["green"].append(green.latency_s)
        self.latencies["blue"].extend(blue)
        for r in outcome.records:
            if r.instance is not None:
                self.by_instance.setdefault((r.arm, r.instance), []).append(r.latency_s)
        return tuple(replace(r, ok=True) for r in outcome.records)

    @property
    def output(self) -> OutputCheckResult:
        """The output check's state."""
        return self._output.result

    def _instance_error_failed(self) -> bool:
        return any(j.result.verdict is Verdict.FAIL for j in self._instance_errors.values())

    @property
    def finished(self) -> bool:
        """Whether more slices could change nothing: a gating failure, or every gate decided."""
        failed = any(g.failed for g in self._latency) \
            or self._errors.result.verdict is Verdict.FAIL or self._instance_error_failed() \
            or (self.output.gating and self.output.verdict is Verdict.FAIL)
        return failed or (all(g.decided for g in self._latency)
                          and self._errors.result.verdict is Verdict.PASS)

    def latency_state(self) -> str:
        """The latency judges' states, for progress displays."""
        return "; ".join(f"{g.spec.name} {g.state()}" for g in self._latency)

    def gate_results(self) -> list[GateResult]:
        """Every gating check's verdict now (undecided ones as ``inconclusive``); also
        records each green instance's verdicts for :meth:`instance_outcomes`."""
        blue = np.asarray(self.latencies["blue"], dtype=np.float64)
        green = np.asarray(self.latencies["green"], dtype=np.float64)
        per_instance = {i: np.asarray(self.by_instance.get(("green", i), ()), dtype=np.float64)
                        for i in self.fleet["green"]}
        self._instance_verdicts = {i: [] for i in self.fleet["green"]}
        out = []
        for gate in self._latency:
            result, verdicts = gate.result(blue, green, per_instance)
            out.append(result)
            for i, v in verdicts.items():
                self._instance_verdicts.setdefault(i, []).append(v)
        out.append(self._error_result())
        o = self.output
        if o.gating:
            out.append(GateResult(o.verdict, o.reason, name="output", kind="output"))
        return out

    def _error_result(self) -> GateResult:
        e = self._errors.result
        verdict = Verdict.INCONCLUSIVE if e.verdict is Verdict.CONTINUE else e.verdict
        reason = e.reason
        evidence: dict[str, Any] = _error_evidence(e)
        broken = [(i, j.result) for i, j in self._instance_errors.items()
                  if j.result.verdict is Verdict.FAIL]
        for i, r in broken:
            self._instance_verdicts.setdefault(i, []).append(instance_verdict(
                i.label, r.requests, Verdict.CONTINUE, "", errors=r.verdict,
                errors_reason=r.reason))
        if broken:
            verdict = Verdict.FAIL
            reason = "; ".join(f"green {i.label} is broken: {r.reason}" for i, r in broken)
        if self._instance_errors:
            evidence.update(levels=self.error_levels.to_dict(), pooled_verdict=e.verdict.value,
                            instance_tests=[{"instance": i.label, **_error_evidence(j.result)}
                                       for i, j in self._instance_errors.items()])
        return GateResult(verdict, reason, samples=e.requests, name=self.error_spec.name,
                          kind="error-rate", evidence=evidence)

    def instance_outcomes(self, gates: Sequence[GateResult]) -> tuple[InstanceOutcome, ...]:
        """Per instance of each arm: judged latencies (n, P50, P95), failed requests, and for
        green its verdict (the worst of its verdicts under each gate; with one green instance
        the canary's verdict over ``gates``); blue instances are the ``baseline``."""
        out = []
        only = next((v for v in PRECEDENCE if v in {g.verdict for g in gates}), Verdict.NODATA)
        for arm in ARMS:
            for i in self.fleet[arm]:
                summary = summarize_instance(self.by_instance.get((arm, i), ()),
                                             self.instance_errors[arm, i])
                if arm == "blue":
                    verdict = "baseline"
                elif len(self.fleet["green"]) == 1:
                    verdict = only.value
                else:
                    mine = {v.verdict for v in self._instance_verdicts.get(i, ())}
                    verdict = next((v for v in PRECEDENCE if v in mine), Verdict.NODATA).value
                out.append(InstanceOutcome(arm=arm, url=i.url, pod=i.pod, node=i.node,
                                           n=summary.n, p50=summary.p50, p95=summary.p95,
                                           errors=summary.errors, verdict=verdict))
        return tuple(out)

    def errors_by_kind(self) -> dict[str, dict[str, int]]:
        """``{arm: {kind: count}}`` with every kind present (zeros included)."""
        return {a: {k: self.error_counts[a][k] for k in ERROR_KINDS} for a in ARMS}


def _error_evidence(e: ErrorRateResult) -> dict[str, Any]:
    return {"max_rate": e.max_rate, "requests": e.requests, "errors": e.errors,
            "rate": _finite(e.rate), "decided_at": e.decided_at,
            "fail_e": _finite(e.fail_e), "fail_threshold": e.fail_threshold,
            "pass_e": _finite(e.pass_e), "pass_threshold": e.pass_threshold}


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None
