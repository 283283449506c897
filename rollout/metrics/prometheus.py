"""The ``prometheus`` metric provider: live-traffic gates from the SD servers' own metrics.

PromQL over the per-colour histograms and counters that Prometheus scrapes from each server
(``color`` label, see :mod:`rollout.local.prometheus`), through the one Prometheus client
(:class:`gates.prometheus.PrometheusClient`). Why it is a second line of evidence and not the
judge: ``histogram_quantile`` interpolates inside buckets, so it cannot resolve a small tail
change; canary samples carry the statistics, live metrics catch what only real traffic shows
(errors, a collapse under load); a gate's explicit ``tolerance`` absorbs bucket interpolation
(the limit is :attr:`~gates.latency.LatencyGateSpec.limit`, as under every method). Which gates
it judges (``source: prometheus`` latency gates, and each error-rate gate as ``NAME-live``) is
the registry's answer (:mod:`gates.registry`, measurement ``prometheus``).

Failure handling is explicit: an empty vector or NaN is ``nodata``; a target whose last scrape
is older than ``stale_after_seconds`` or that is down is ``nodata`` (flagger #1011: traffic
stopping mid-analysis went unnoticed). A measurement error (Prometheus unreachable, not
answering a query completely within its deadline, a 5xx, more than the size cap, something that
is not a query result) is retried after its ``delay`` hint with exponential backoff, like Argo
Rollouts' ``consecutiveErrorLimit``: only the ``consecutive_error_limit + 1``-th error in a row,
or one whose retry would not fit in the analysis window, makes the gate ``error`` (with the
count and the last reason). A query Prometheus rejects is ``error`` at once (a retry cannot
fix it). None is a pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gates.error_rate import ErrorRateGateSpec
from gates.gate import Gate, GateResult
from gates.latency import LatencyGateSpec
from gates.prometheus import PrometheusClient, PrometheusQueryError, PrometheusUnavailableError
from gates.registry import Check, Measurement, checks, evaluate_live
from gates.verdict import Verdict

__all__ = ["DEFAULT_CONSECUTIVE_ERROR_LIMIT", "PrometheusClient", "PrometheusProvider"]

#: Measurement errors in a row a live gate tolerates (retrying) before it is ``error``
#: (Argo Rollouts' ``consecutiveErrorLimit`` default).
DEFAULT_CONSECUTIVE_ERROR_LIMIT = 4
#: First retry delay when the error gives no longer hint, and the backoff's cap, seconds.
_RETRY_DELAY_S, _MAX_RETRY_DELAY_S = 0.5, 8.0


@dataclass(frozen=True)
class _ArmStats:
    requests: float
    quantile: float


class PrometheusProvider:
    """Live-traffic gates (:class:`rollout.metrics.base.MetricProvider`; the registry's
    :class:`~gates.registry.LiveMetrics`).

    Args:
        client: the Prometheus client.
        consecutive_error_limit: measurement errors in a row tolerated (each retried) before a
            gate's verdict is ``error``.
        sleep, clock: the retry wait and the monotonic clock (tests pass fakes).
    """

    def __init__(self, client: PrometheusClient, *, stale_after_seconds: float = 10.0,
                 min_requests: int = 10,
                 histogram: str = "sd_request_duration_seconds",
                 requests_counter: str = "sd_requests_total",
                 consecutive_error_limit: int = DEFAULT_CONSECUTIVE_ERROR_LIMIT,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if consecutive_error_limit < 0:
            raise ValueError(f"consecutive_error_limit must be >= 0, got {consecutive_error_limit}")
        self.client = client
        self.stale_after = stale_after_seconds
        self.min_requests = min_requests
        self.histogram = histogram
        self.requests_counter = requests_counter
        self.consecutive_error_limit = consecutive_error_limit
        self.sleep = sleep
        self.clock = clock
        self._blue_offset = 0.0

    def evaluate(self, gates: Sequence[Gate], *, window_seconds: float,
                 blue_offset_seconds: float = 0.0) -> Mapping[str, GateResult]:
        """Live verdicts for the registry's ``prometheus`` checks of ``gates``.

        ``blue_offset_seconds`` shifts blue's window into the past: after the switch blue gets
        no traffic, so green is judged against blue's last window before it. Retries of
        measurement errors, over all gates, end within ``window_seconds``.
        """
        self._blue_offset = blue_offset_seconds
        deadline = self.clock() + window_seconds
        return {c.name: self._measure(c, window_seconds, deadline)
                for c in checks(gates, live=True, measurement=Measurement.LIVE)}

    def _measure(self, check: Check, window: float, deadline: float) -> GateResult:
        """One check, its measurement errors retried up to the limit and the deadline."""
        errors, backoff = 0, _RETRY_DELAY_S
        while True:
            try:
                result = evaluate_live(check, self, window)
            except PrometheusQueryError as e:
                return GateResult(Verdict.ERROR, str(e), errors=errors + 1)
            except PrometheusUnavailableError as e:
                errors += 1
                wait = max(e.delay, backoff)
                if errors > self.consecutive_error_limit or self.clock() + wait > deadline:
                    return GateResult(Verdict.ERROR, f"{e} ({errors} measurement error(s) in "
                                      f"a row, limit {self.consecutive_error_limit})",
                                      errors=errors)
                self.sleep(wait)
                backoff = min(2 * backoff, _MAX_RETRY_DELAY_S)
                continue
            return result if not errors else GateResult(
                result.verdict, f"{result.reason} (after {errors} measurement error(s))",
                errors=errors, samples=result.samples, evidence=result.evidence)

    def _freshness(self, color: str) -> str | None:
        """Why ``color``'s data cannot be trusted now, or None."""
        up = self.client.value(f'max(up{{color="{color}"}})')
        if math.isnan(up):
            return f"no scrape target for {color}"
        if up < 1:
            return f"{color} target is down"
        age = self.client.value(f'time() - max(timestamp(up{{color="{color}"}}))')
        if not math.isfinite(age) or age > self.stale_after:
            return f"{color} data is stale ({age:.0f} s since last scrape)"
        return None

    def _arm(self, color: str, q: float, window: float) -> _ArmStats:
        # A range selector, e.g. "[30s]" or, for blue after the switch, "[30s] offset 30s".
        rng = f"[{max(int(window), 1)}s]"
        if color == "blue" and self._blue_offset > 0:
            rng += f" offset {int(self._blue_offset)}s"
        sel = f'{self.histogram}_bucket{{color="{color}"}}'
        count = self.client.value(
            f'sum(increase({self.histogram}_count{{color="{color}"}}{rng}))')
        quant = self.client.value(
            f"histogram_quantile({q}, sum by (le) (increase({sel}{rng})))")
        return _ArmStats(requests=count, quantile=quant)

    def latency(self, gate: LatencyGateSpec, window: float) -> GateResult:
        """Live quantile ratio green / blue (raises on measurement errors)."""
        for color in ("blue", "green"):
            problem = self._freshness(color)
            if problem:
                return GateResult(Verdict.NODATA, problem)
        blue, green = (self._arm(c, gate.quantile, window) for c in ("blue", "green"))
        pname = f"P{gate.quantile * 100:g}"
        for color, arm in (("blue", blue), ("green", green)):
            if not math.isfinite(arm.requests) or arm.requests < self.min_requests:
                when = f" ending {self._blue_offset:.0f} s ago" if (
                    color == "blue" and self._blue_offset) else ""
                return GateResult(Verdict.NODATA, f"{color}: {arm.requests:.0f} requests in "
                                  f"{window:.0f} s{when} (< {self.min_requests})")
            if not math.isfinite(arm.quantile):
                return GateResult(Verdict.NODATA, f"{color}: {pname} is NaN")
        if gate.ceiling_seconds is not None and green.quantile > gate.ceiling_seconds:
            return GateResult(Verdict.FAIL, f"live green {pname} {green.quantile:.3f} s > "
                              f"ceiling {gate.ceiling_seconds} s")
        limit = gate.limit  # maxRatio x (1 + tolerance): one meaning (gates.latency)
        ratio = green.quantile / blue.quantile if blue.quantile > 0 else math.inf
        verdict = Verdict.FAIL if ratio > limit else Verdict.PASS
        return GateResult(verdict, f"live {pname} green {green.quantile:.3f} s / blue "
                          f"{blue.quantile:.3f} s = {ratio:.2f} (limit {limit:.2f})")

    def error_rate(self, gate: ErrorRateGateSpec, window: float) -> GateResult:
        """Live 5xx rate of green (raises on measurement errors)."""
        problem = self._freshness("green")
        if problem:
            return GateResult(Verdict.NODATA, problem)
        w = f"{max(int(window), 1)}s"
        sel = f'{self.requests_counter}{{color="green"'
        total = self.client.value(f"sum(increase({sel}}}[{w}]))")
        bad = self.client.value(f'sum(increase({sel},code=~"5.."}}[{w}]))')
        if not math.isfinite(total) or total < 1:
            return GateResult(Verdict.NODATA, f"no green requests in the last {w}")
        rate = (bad if math.isfinite(bad) else 0.0) / total
        verdict = Verdict.FAIL if rate > gate.max_rate else Verdict.PASS
        return GateResult(verdict, f"live green 5xx rate {rate:.3%} of {total:.0f} requests "
                          f"(max {gate.max_rate:.1%})")
