"""The ``prometheus`` metric provider: live-traffic gates from the SD servers' own metrics.

PromQL over the per-colour histograms and counters that Prometheus scrapes from each server
(``color`` label, see :mod:`rollout.local.prometheus`). Why it is a second line of evidence and
not the judge: ``histogram_quantile`` interpolates inside buckets, so it cannot resolve a small
tail change; canary samples carry the statistics, live metrics catch what only real traffic
shows (errors, a collapse under load) with a tolerance that absorbs bucket interpolation.

Failure handling is explicit: an empty vector or NaN is ``nodata``; a target whose last scrape
is older than ``stale_after_seconds`` or that is down is ``nodata`` (flagger #1011: traffic
stopping mid-analysis went unnoticed); an unreachable Prometheus, one that does not answer a
query completely within its deadline, or answers more than the size cap or something that is
not a query result, is ``error``. None is a pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from gates.bounded import EXCHANGE_SECONDS, PROMETHEUS_MAX_BYTES, BoundedReadError, read_bounded
from gates.latency import LatencyGateSpec
from gates.verdict import Verdict
from rollout.errors import BadInputError, UnavailableError
from rollout.machine import GateResult

__all__ = ["PrometheusClient", "PrometheusProvider"]


class PrometheusClient:
    """Instant queries against Prometheus' HTTP API.

    Args:
        url: Prometheus' base URL.
        timeout: deadline of one whole query exchange (connect, headers, body), seconds.
        max_bytes: cap on one answer's body (:mod:`gates.bounded`).
        transport: an httpx transport (tests).
    """

    def __init__(self, url: str, *, timeout: float = EXCHANGE_SECONDS,
                 max_bytes: int = PROMETHEUS_MAX_BYTES,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._client = httpx.Client(timeout=timeout, transport=transport)

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) per series of an instant vector (or one scalar as a vector).

        Raises:
            UnavailableError: Prometheus did not answer completely within the deadline or
                within the size cap, answered 5xx, or answered something that is not a query
                result.
            BadInputError: Prometheus rejected the query (4xx / status error).
        """
        request = self._client.build_request("GET", f"{self.url}/api/v1/query",
                                             params={"query": promql})
        try:
            r = read_bounded(self._client, request, deadline_s=self.timeout,
                             max_bytes=self.max_bytes)
        except BoundedReadError as e:
            raise UnavailableError(f"Prometheus at {self.url}: {e}") from e
        except httpx.HTTPError as e:
            raise UnavailableError(f"Prometheus at {self.url}: {e}") from e
        if r.status_code >= 500:
            raise UnavailableError(f"Prometheus at {self.url}: HTTP {r.status_code}")
        try:
            body = r.json()
            if not isinstance(body, dict):
                raise TypeError(f"a JSON {type(body).__name__}, not an object")
            if body.get("status") != "success":
                raise BadInputError(f"Prometheus rejected {promql!r}: {body.get('error')}")
            data = body["data"]
            if data["resultType"] == "scalar":
                return [({}, float(data["result"][1]))]
            return [(s["metric"], float(s["value"][1])) for s in data["result"]]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise UnavailableError(f"Prometheus at {self.url}: HTTP {r.status_code}, not a "
                                   f"query result: {type(e).__name__}: {e}") from e

    def value(self, promql: str) -> float:
        """The single value of ``promql``; NaN when the vector is empty."""
        rows = self.query(promql)
        return rows[0][1] if rows else math.nan

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()


@dataclass(frozen=True)
class _ArmStats:
    requests: float
    quantile: float


class PrometheusProvider:
    """Latency (``source: prometheus``) and error-rate gates on live traffic."""

    def __init__(self, client: PrometheusClient, *, stale_after_seconds: float = 10.0,
                 min_requests: int = 10, tolerance: float = 0.15,
                 histogram: str = "sd_request_duration_seconds",
                 requests_counter: str = "sd_requests_total") -> None:
        self.client = client
        self.stale_after = stale_after_seconds
        self.min_requests = min_requests
        self.tolerance = tolerance
        self.histogram = histogram
        self.requests_counter = requests_counter
        self._blue_offset = 0.0

    def evaluate(self, gates: Sequence[Any], *, window_seconds: float,
                 blue_offset_seconds: float = 0.0) -> Mapping[str, GateResult]:
        """Live verdicts for the latency gates with ``source: prometheus`` and error-rate gates.

        ``blue_offset_seconds`` shifts blue's window into the past: after the switch blue gets
        no traffic, so green is judged against blue's last window before it.
        """
        out: dict[str, GateResult] = {}
        self._blue_offset = blue_offset_seconds
        for gate in gates:
            if isinstance(gate, LatencyGateSpec) and gate.source == "prometheus":
                out[gate.name] = self._guard(self._latency, gate, window_seconds)
            elif getattr(gate, "type", None) == "error-rate":
                out[f"{gate.name}-live"] = self._guard(self._error_rate, gate, window_seconds)
        return out

    def _guard(self, fn: Any, gate: Any, window: float) -> GateResult:
        try:
            result: GateResult = fn(gate, window)
        except (UnavailableError, BadInputError) as e:
            return GateResult(Verdict.ERROR, str(e), errors=1)
        return result

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

    def _latency(self, gate: LatencyGateSpec, window: float) -> GateResult:
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
        limit = gate.max_ratio * (1 + self.tolerance)
        ratio = green.quantile / blue.quantile if blue.quantile > 0 else math.inf
        verdict = Verdict.FAIL if ratio > limit else Verdict.PASS
        return GateResult(verdict, f"live {pname} green {green.quantile:.3f} s / blue "
                          f"{blue.quantile:.3f} s = {ratio:.2f} (limit {limit:.2f})")

    def _error_rate(self, gate: Any, window: float) -> GateResult:
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
