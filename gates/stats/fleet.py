"""Judging a fleet: each green instance against blue's pool, with the error rate shared out.

Why per instance: one green replica on a drifted node among three makes the pooled green only
a third slower in its slow third; a pooled test may pass it, or fail without saying which pod
to look at. Each green instance is therefore tested on its own slices against blue's pooled
samples, with the method the policy's latency gate uses, and the rollout fails naming the
instance (pod and node) that is slower or broken.

Levels (Bonferroni). With ``m`` green instances a latency gate at level ``alpha`` tests
``m + 1`` hypotheses: the pooled one ("green as a whole is no slower") and one per instance
("instance ``i`` is no slower than blue's pool"). Failing when any of them is rejected keeps
the probability of failing a green that is no slower anywhere at ``alpha`` by the union bound
when the pooled test gets ``alpha / 2`` and each instance ``alpha / (2 m)``
(:func:`fleet_levels`); with one green instance the pooled test *is* the instance test and
keeps the whole ``alpha``. Bonferroni rather than Holm because the sequential judges decide at
different times, each with its own anytime-valid threshold: Holm's step-down needs every
p-value at one look, which would throw away the early stops. The same split serves the
error-rate gate (pooled judge plus one fail-only judge per instance).

Small samples are never a pass: an instance whose judge has not decided, or with fewer judged
requests than :func:`min_samples` (the fewest for which the judged quantile lies below the
sample maximum), is ``inconclusive`` or ``nodata``, and the gate with it
(:func:`fleet_verdict`).

Everything here is pure: the canary's evaluation (:mod:`gates.canary.evaluation`) streams the
slices into the judges and calls these to summarise, combine and name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from gates._validation import check_probability
from gates.verdict import Verdict

__all__ = ["FleetLevels", "FleetVerdict", "InstanceRatio", "InstanceSummary", "InstanceVerdict",
           "fleet_levels", "fleet_verdict", "instance_verdict", "min_samples",
           "slowest_instance", "summarize_instance"]

# Worst first, as gates.gate.PRECEDENCE (not imported: gates.stats depends on nothing above it).
_WORST: tuple[Verdict, ...] = (Verdict.FAIL, Verdict.ERROR, Verdict.NODATA,
                               Verdict.INCONCLUSIVE, Verdict.CONTINUE, Verdict.PASS)


@dataclass(frozen=True)
class FleetLevels:
    """How a gate's ``alpha`` is shared between the pooled test and the instances."""

    instances: int
    alpha: float
    pooled_alpha: float
    instance_alpha: float

    @property
    def per_instance(self) -> bool:
        """Whether instances are tested on their own (more than one green instance)."""
        return self.instances > 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"instances": self.instances, "alpha": self.alpha,
                "pooled_alpha": self.pooled_alpha, "instance_alpha": self.instance_alpha}


def fleet_levels(alpha: float, instances: int) -> FleetLevels:
    """Bonferroni shares of ``alpha`` for ``instances`` green instances (module docstring).

    Raises:
        ValueError: ``alpha`` outside (0, 1) or ``instances < 1``.
    """
    a = check_probability(alpha, "alpha")
    if instances < 1:
        raise ValueError(f"a fleet has at least one instance, got {instances}")
    if instances == 1:
        return FleetLevels(1, a, a, a)
    return FleetLevels(instances, a, a / 2, a / (2 * instances))


def min_samples(quantile: float) -> int:
    """Judged requests an instance needs before its ``quantile`` can be told from its
    maximum: ``ceil(1 / (1 - quantile))`` (20 at P95). Fewer is ``nodata``, never a pass."""
    q = check_probability(quantile, "quantile")
    return math.ceil(round(1 / (1 - q), 9))


@dataclass(frozen=True)
class InstanceSummary:
    """What one instance served: judged latencies (size, P50, P95) and failed requests."""

    n: int
    p50: float | None
    p95: float | None
    errors: int


def summarize_instance(latencies: ArrayLike, errors: int = 0) -> InstanceSummary:
    """Size, P50 and P95 (numpy's default interpolation, as every report) of the judged
    latencies, with the instance's failed requests; ``None`` quantiles without data."""
    x = np.asarray(latencies, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return InstanceSummary(0, None, None, int(errors))
    return InstanceSummary(int(x.size), float(np.quantile(x, 0.5)), float(np.quantile(x, 0.95)),
                           int(errors))


@dataclass(frozen=True)
class InstanceVerdict:
    """One green instance's verdict: its latency test and its error-rate test combined.

    Attributes:
        key: how reasons name the instance (pod and node, else its URL).
        verdict: ``fail`` (slower than blue's pool, or broken), ``pass``, ``inconclusive``
            (its judge did not decide), ``nodata`` (too few judged requests).
        n: judged latencies of the instance.
        reason: one sentence, starting with ``key``.
    """

    key: str
    verdict: Verdict
    n: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"instance": self.key, "verdict": self.verdict.value, "n": self.n,
                "reason": self.reason}


def instance_verdict(key: str, n: int, latency: Verdict, latency_reason: str, *,
                     errors: Verdict = Verdict.CONTINUE, errors_reason: str = "",
                     needed: int = 1) -> InstanceVerdict:
    """Combine an instance's latency verdict (``continue`` while its judge is undecided) and
    its fail-only error verdict.

    A failure of either fails the instance. Otherwise fewer than ``needed`` judged latencies
    is ``nodata`` and an undecided latency judge ``inconclusive``: never a pass.
    """
    if errors is Verdict.FAIL:
        return InstanceVerdict(key, Verdict.FAIL, n, f"{key} is broken: {errors_reason}")
    if latency is Verdict.FAIL:
        return InstanceVerdict(key, Verdict.FAIL, n,
                               f"{key} is slower than blue's pool: {latency_reason}")
    if n < needed:
        return InstanceVerdict(key, Verdict.NODATA, n, (
            f"{key}: {n} judged requests, {needed} needed to judge it (never a pass)"))
    if latency in (Verdict.CONTINUE, Verdict.INCONCLUSIVE):
        return InstanceVerdict(key, Verdict.INCONCLUSIVE, n, f"{key} undecided: {latency_reason}")
    return InstanceVerdict(key, latency, n, f"{key}: {latency_reason}")


@dataclass(frozen=True)
class InstanceRatio:
    """An instance's quantile against blue's pooled quantile."""

    key: str
    ratio: float
    green_quantile: float
    blue_quantile: float


def slowest_instance(blue_pool: ArrayLike, green: Mapping[str, ArrayLike], *,
                     quantile: float) -> InstanceRatio | None:
    """The green instance whose ``quantile`` is highest relative to blue's pool (instances with
    fewer than :func:`min_samples` latencies are left out); ``None`` when none qualifies.

    Descriptive, not a test: it names where to look when the pooled test failed before any
    instance's own test did."""
    blue = np.asarray(blue_pool, dtype=np.float64).reshape(-1)
    need = min_samples(quantile)
    if blue.size < need:
        return None
    bq = float(np.quantile(blue, quantile))
    best: InstanceRatio | None = None
    for key, values in green.items():
        g = np.asarray(values, dtype=np.float64).reshape(-1)
        if g.size < need:
            continue
        gq = float(np.quantile(g, quantile))
        ratio = gq / bq if bq > 0 else math.inf
        if best is None or ratio > best.ratio:
            best = InstanceRatio(key, ratio, gq, bq)
    return best


@dataclass(frozen=True)
class FleetVerdict:
    """A gate's verdict over the pooled test and every instance's."""

    verdict: Verdict
    reason: str
    failed: tuple[str, ...]
    undecided: tuple[str, ...]


def fleet_verdict(pooled: Verdict, pooled_reason: str,
                  instances: Sequence[InstanceVerdict], *,
                  suspect: InstanceRatio | None = None, quantile: float = 0.95) -> FleetVerdict:
    """Fail if the pooled test or any instance failed (naming the failed instances, else the
    ``suspect``); pass only if the pooled test and every instance passed; otherwise the
    worst verdict present, naming the instances that held the gate back."""
    failed = tuple(i.key for i in instances if i.verdict is Verdict.FAIL)
    undecided = tuple(i.key for i in instances if i.verdict is not Verdict.PASS
                      and i.verdict is not Verdict.FAIL)
    if failed:
        reason = "; ".join(i.reason for i in instances if i.verdict is Verdict.FAIL)
        return FleetVerdict(Verdict.FAIL, reason, failed, undecided)
    if pooled is Verdict.FAIL:
        reason = pooled_reason
        if suspect is not None:
            reason += (f"; slowest green instance: {suspect.key} (P{quantile * 100:g} "
                       f"{suspect.green_quantile:.3f} s, {suspect.ratio:.2f}x blue's pool "
                       f"{suspect.blue_quantile:.3f} s)")
        return FleetVerdict(Verdict.FAIL, reason, (), undecided)
    verdicts = [pooled, *(i.verdict for i in instances)]
    worst = next(v for v in _WORST if v in verdicts)
    if worst is Verdict.PASS:
        return FleetVerdict(Verdict.PASS, f"{pooled_reason}; every green instance passed "
                            f"({len(instances)})" if instances else pooled_reason, (), ())
    held = [i.reason for i in instances if i.verdict is worst]
    reason = "; ".join([*([pooled_reason] if pooled is worst else []), *held])
    return FleetVerdict(worst, reason, (), undecided)
