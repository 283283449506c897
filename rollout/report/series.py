"""The numbers behind the report's plots: pure functions over latency arrays.

Why recompute instead of plotting what the controller logged: the controller keeps only the
final state of each judge. Replaying the recorded requests through the same functions
(:func:`gates.stats.quantiles.quantile_ci`, :func:`gates.stats.sequential.sequential_test`) in
the order the judge consumed them gives the whole trajectory, and its end must agree with the
recorded decision, which the report checks and shows.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gates._validation import as_latencies
from gates.canary.records import ERROR_KINDS
from gates.stats.quantiles import quantile_ci
from gates.stats.sequential import SequentialResult, sequential_test
from rollout.report.source import CanaryRun, LatencyGateParams

__all__ = ["OVERHEAD_TOLERANCE_S", "Ecdf", "ErrorBreakdown", "JudgeReplay", "RunningQuantile",
           "TimingSplit", "ecdf", "error_breakdown", "overhead_difference", "replay_judge",
           "running_quantile", "server_total", "slice_grid", "timing_split"]

#: Median client overhead (client latency minus the server's total) may differ this much
#: between the arms before the report flags it: loopback and in-cluster noise stay well under
#: it, while a proxy, TLS setup or a slower network path on one arm exceeds it.
OVERHEAD_TOLERANCE_S = 0.010

_Floats = NDArray[np.float64]


@dataclass(frozen=True)
class Ecdf:
    """Empirical CDF: ``p[i]`` is the fraction of values ``<= x[i]`` (``x`` sorted)."""

    x: _Floats
    p: _Floats


def ecdf(values: ArrayLike, *, arm: str) -> Ecdf:
    """The empirical CDF of a latency sample.

    Raises:
        LatencyInputError: a NaN, infinite or negative value.
        NoDataError: the sample is empty.
    """
    x = np.sort(as_latencies(values, arm=arm))
    return Ecdf(x=x, p=np.arange(1, x.size + 1, dtype=np.float64) / x.size)


@dataclass(frozen=True)
class RunningQuantile:
    """A quantile of growing prefixes of a sample, with exact distribution-free bounds.

    ``low``/``high`` are NaN where the prefix is too small to bound the quantile at
    ``conf_level`` (an honest gap in the band rather than an invented one).
    """

    quantile: float
    conf_level: float
    sizes: NDArray[np.int64]
    value: _Floats
    low: _Floats
    high: _Floats


def running_quantile(values: ArrayLike, q: float, sizes: ArrayLike, *,
                     conf_level: float = 0.95, arm: str = "sample") -> RunningQuantile:
    """``quantile_ci`` of ``values[:n]`` for each ``n`` in ``sizes`` (arrival order matters).

    Raises:
        LatencyInputError: a bad value.
        NoDataError: ``values`` is empty.
        ValueError: a size outside ``1..len(values)``.
    """
    x = as_latencies(values, arm=arm)
    n = np.asarray(sizes, dtype=np.int64).reshape(-1)
    if n.size == 0 or n.min() < 1 or n.max() > x.size:
        raise ValueError(f"sizes must lie in 1..{x.size}")
    est = [quantile_ci(x[:k], q, conf_level=conf_level, arm=arm) for k in n]

    def finite(v: float) -> float:
        return v if math.isfinite(v) else math.nan

    return RunningQuantile(
        quantile=q, conf_level=conf_level, sizes=n,
        value=np.asarray([e.value for e in est], dtype=np.float64),
        low=np.asarray([finite(e.ci_low) for e in est], dtype=np.float64),
        high=np.asarray([finite(e.ci_high) for e in est], dtype=np.float64))


def slice_grid(slices: int, points: int = 150) -> NDArray[np.int64]:
    """Up to ``points`` slice counts from 1 to ``slices`` (all of them when there are few):
    enough for a smooth curve without one interval per request on long runs."""
    if slices < 1:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(1, slices, num=min(slices, points)).round().astype(np.int64))


@dataclass(frozen=True)
class JudgeReplay:
    """One latency gate's evidence replayed over a canary run's records.

    Attributes:
        gate: the gate's parameters.
        blue_per_green: ``K`` of the run.
        slices: complete slices in the records (green judged latencies).
        result: :func:`sequential_test` over them (``None`` for non-sequential methods).
        green, blue: the running quantile per arm at ``grid`` slices (blue at ``K`` times).
        grid: slice counts the running quantiles were computed at.
        agrees: whether the replay's decision matches the recorded one (``None``: nothing
            recorded to compare with).
    """

    gate: LatencyGateParams
    blue_per_green: int
    slices: int
    result: SequentialResult | None
    green: RunningQuantile
    blue: RunningQuantile
    grid: NDArray[np.int64]
    agrees: bool | None


def replay_judge(run: CanaryRun, gate: LatencyGateParams, *, points: int = 150,
                 conf_level: float = 0.95) -> JudgeReplay:
    """Replay ``gate`` over ``run``'s judged latencies in arrival order.

    Trailing blues of an incomplete last slice (a truncated file) are left out, as the judge
    never saw them.

    Raises:
        NoDataError: an arm has no judged latency.
        LatencyInputError: a bad latency.
    """
    k = run.blue_per_green
    green = as_latencies(run.latencies("green"), arm="green")
    blue = as_latencies(run.latencies("blue"), arm="blue")
    slices = min(green.size, blue.size // k)
    green, blue = green[:slices], blue[:slices * k]
    grid = slice_grid(slices, points)
    result = None
    if gate.method == "sequential":
        result = sequential_test(green, blue, blue_per_green=k, quantile=gate.quantile,
                                 alpha=gate.alpha, max_ratio=gate.max_ratio)
    return JudgeReplay(
        gate=gate, blue_per_green=k, slices=slices, result=result,
        green=running_quantile(green, gate.quantile, grid, conf_level=conf_level, arm="green"),
        blue=running_quantile(blue, gate.quantile, grid * k, conf_level=conf_level, arm="blue"),
        grid=grid, agrees=_agrees(result, gate))


def _agrees(result: SequentialResult | None, gate: LatencyGateParams) -> bool | None:
    """Whether the replay reproduces the recorded judge: decided at the same slice (or not at
    all), after the same number of slices, with the same rollback evidence.

    The judge's state is compared rather than the gate's verdict, which a ``ceilingSeconds``
    check may have turned into a failure after the judge passed.
    """
    rec = gate.recorded
    if result is None or rec is None or "slices" not in rec:
        return None
    d = result.decision
    e = rec.get("e_value")
    return bool(result.decided_at == rec.get("decided_at") and d.slices == rec["slices"]
                and (e is None or math.isclose(d.e_value, float(e), rel_tol=1e-6)))


@dataclass(frozen=True)
class ErrorBreakdown:
    """One arm's requests of a canary run by outcome.

    Attributes:
        arm: ``blue`` or ``green``.
        measured: requests of measured slices that finished (warm-up and cancelled ones not
            counted).
        judged: requests whose latency the judge used (timeouts included, as censored values).
        errors: failures by kind among the measured requests (every kind present).
        excluded: requests left out of the judge by reason (``warmup``, ``slice-error``,
            ``cancelled``).
        statuses: HTTP status (``"none"``: no answer) -> measured requests.
        details: the most frequent failure details with their counts.
    """

    arm: str
    measured: int
    judged: int
    errors: dict[str, int]
    excluded: dict[str, int]
    statuses: dict[str, int]
    details: tuple[tuple[str, int], ...]

    @property
    def failed(self) -> int:
        """Measured requests that failed (any kind, timeouts included)."""
        return sum(self.errors.values())


def error_breakdown(rows: Sequence[Mapping[str, Any]], arm: str, *,
                    top: int = 8) -> ErrorBreakdown:
    """Count one arm's rows of ``requests.jsonl`` by outcome (see :class:`ErrorBreakdown`)."""
    mine = [r for r in rows if r.get("arm") == arm]
    excluded = Counter(str(r["excluded"]) for r in mine if r.get("excluded"))
    measured = [r for r in mine if r.get("excluded") not in ("warmup", "cancelled")]
    errors: dict[str, int] = dict.fromkeys(ERROR_KINDS, 0)
    errors.update(Counter(str(r["error"]) for r in measured if r.get("error")))
    statuses = Counter(str(r.get("status") or "none") for r in measured)
    details = Counter(f"{r['error']}: {r.get('detail') or 'no detail'}" for r in measured
                      if r.get("error"))
    return ErrorBreakdown(arm=arm, measured=len(measured),
                          judged=sum(1 for r in mine if r.get("ok") is True),
                          errors=errors, excluded=dict(excluded),
                          statuses=dict(sorted(statuses.items())),
                          details=tuple(details.most_common(top)))


def server_total(timing: Mapping[str, Any] | None) -> float | None:
    """The server's own time for a request, from a record's ``server_timing`` (seconds).

    Its ``total`` where it sent one; otherwise the sum of what it sent (the reference server's
    queue, inference and encode are consecutive phases; a server naming one phase, such as
    the loopback's ``svc``, gives that one). ``None`` when there is nothing usable.
    """
    if not isinstance(timing, Mapping):
        return None
    usable = {k: float(v) for k, v in timing.items() if isinstance(v, int | float)
              and not isinstance(v, bool) and math.isfinite(v) and v >= 0}
    if not usable:
        return None
    return usable.get("total", sum(usable.values()))


@dataclass(frozen=True)
class TimingSplit:
    """One arm's judged client latency beside the server's own timing (P50, P95 in seconds).

    Attributes:
        arm: ``blue`` or ``green``.
        judged: judged requests of the arm.
        timed: those among them whose answer carried a usable ``Server-Timing``.
        client, server, overhead: P50 and P95 of the client latency, of the server's total and
            of their per-request difference (what the network and the client add), over the
            ``timed`` requests.
    """

    arm: str
    judged: int
    timed: int
    client: tuple[float, float]
    server: tuple[float, float]
    overhead: tuple[float, float]


def timing_split(rows: Sequence[Mapping[str, Any]], arm: str) -> TimingSplit | None:
    """Client vs server latency of ``arm``'s judged rows; ``None`` when none carries a server
    timing (the judge keeps using client latency: this only explains it)."""
    judged = [r for r in rows if r.get("arm") == arm and r.get("ok") is True]
    pairs = [(float(r["latency_s"]), t) for r in judged
             if (t := server_total(r.get("server_timing"))) is not None]
    if not pairs:
        return None
    client = np.asarray([c for c, _ in pairs], dtype=np.float64)
    server = np.asarray([s for _, s in pairs], dtype=np.float64)

    def p50_p95(x: _Floats) -> tuple[float, float]:
        q = np.quantile(x, [0.5, 0.95])
        return float(q[0]), float(q[1])

    return TimingSplit(arm=arm, judged=len(judged), timed=len(pairs), client=p50_p95(client),
                       server=p50_p95(server), overhead=p50_p95(client - server))


def overhead_difference(blue: TimingSplit, green: TimingSplit) -> float:
    """Green's median client overhead minus blue's (seconds): beyond
    :data:`OVERHEAD_TOLERANCE_S` either way, part of a latency difference the judge sees
    comes from outside the servers (or a server's timing is not comparable)."""
    return green.overhead[0] - blue.overhead[0]
