"""The one Prometheus HTTP client: instant and range queries, every answer read bounded.

Both users speak Prometheus through it: the live-traffic gates (``rollout.metrics.prometheus``)
and the utilization floor's DCGM queries (:mod:`gates.utilization.prometheus`). Every exchange
goes through :func:`gates.bounded.read_bounded` (one deadline for connect, headers and body;
a cap on the body). Failures are typed so callers can tell what a retry could fix:

* :class:`PrometheusUnavailableError` (temporary): unreachable, too slow, too large, a 5xx,
  or an answer that is not a query result. ``delay`` is a hint for the retry (``Retry-After``
  when Prometheus or a proxy in front of it sent one).
* :class:`PrometheusQueryError` (permanent): Prometheus rejected the query (4xx, or
  ``status: error``): retrying the same query cannot help.

The module never imports :mod:`rollout`.
"""

from __future__ import annotations

import math
from typing import Any

import httpx

from gates.bounded import EXCHANGE_SECONDS, PROMETHEUS_MAX_BYTES, BoundedReadError, read_bounded

__all__ = [
    "PrometheusClient",
    "PrometheusError",
    "PrometheusQueryError",
    "PrometheusUnavailableError",
    "Sample",
]

#: One series of an instant vector: its labels and value.
Sample = tuple[dict[str, str], float]
#: The retry hint when Prometheus gave none, seconds.
_DEFAULT_DELAY_S = 0.5


class PrometheusError(Exception):
    """A query did not produce a result."""


class PrometheusUnavailableError(PrometheusError):
    """Prometheus did not answer usably now; retrying after ``delay`` seconds may help."""

    def __init__(self, message: str, *, delay: float = _DEFAULT_DELAY_S) -> None:
        super().__init__(message)
        self.delay = delay


class PrometheusQueryError(PrometheusError):
    """Prometheus rejected the query itself (4xx or ``status: error``)."""


def _retry_after(response: Any) -> float:
    try:
        value = float(response.headers.get("retry-after", ""))
    except (TypeError, ValueError):
        return _DEFAULT_DELAY_S
    return value if math.isfinite(value) and value >= 0 else _DEFAULT_DELAY_S


class PrometheusClient:
    """Queries against Prometheus' HTTP API (``/api/v1/query``, ``/api/v1/query_range``).

    Args:
        url: Prometheus' base URL.
        timeout: deadline of one whole query exchange (connect, headers, body), seconds.
        max_bytes: cap on one answer's body (:mod:`gates.bounded`).
        transport: an httpx transport (tests).
        http: an ``httpx.Client`` to use instead of one of its own (not closed by
            :meth:`close`).
    """

    def __init__(self, url: str, *, timeout: float = EXCHANGE_SECONDS,
                 max_bytes: int = PROMETHEUS_MAX_BYTES,
                 transport: httpx.BaseTransport | None = None,
                 http: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._owns = http is None
        self._client = http if http is not None else httpx.Client(timeout=timeout,
                                                                  transport=transport)

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        """The ``data`` of a successful answer.

        Raises:
            PrometheusUnavailableError, PrometheusQueryError: see the module docstring.
        """
        where = f"Prometheus at {self.url}"
        request = self._client.build_request("GET", self.url + path, params=params)
        try:
            r = read_bounded(self._client, request, deadline_s=self.timeout,
                             max_bytes=self.max_bytes)
        except BoundedReadError as e:
            raise PrometheusUnavailableError(f"{where}: {e}") from e
        except httpx.HTTPError as e:
            raise PrometheusUnavailableError(f"{where}: {type(e).__name__}: {e}") from e
        if r.status_code >= 500 or r.status_code == 429:
            raise PrometheusUnavailableError(f"{where}: HTTP {r.status_code}",
                                             delay=_retry_after(r))
        try:
            body = r.json()
            if not isinstance(body, dict):
                raise TypeError(f"a JSON {type(body).__name__}, not an object")
            status = body.get("status")
        except (ValueError, TypeError) as e:
            raise PrometheusUnavailableError(f"{where}: HTTP {r.status_code}, not a query "
                                             f"result: {type(e).__name__}: {e}") from e
        if status != "success":
            raise PrometheusQueryError(f"{where} rejected {params.get('query')!r} "
                                       f"(HTTP {r.status_code}): {body.get('error', body)}")
        return body.get("data")

    def query(self, promql: str) -> list[Sample]:
        """(labels, value) per series of an instant vector (or one scalar as a vector).

        Raises:
            PrometheusUnavailableError, PrometheusQueryError: see the module docstring.
        """
        data = self._get("/api/v1/query", {"query": promql})
        try:
            if data["resultType"] == "scalar":
                return [({}, float(data["result"][1]))]
            return [(s["metric"], float(s["value"][1])) for s in data["result"]]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise PrometheusUnavailableError(f"Prometheus at {self.url}: not a query result: "
                                             f"{type(e).__name__}: {e}") from e

    def value(self, promql: str) -> float:
        """The single value of ``promql``; NaN when the vector is empty."""
        rows = self.query(promql)
        return rows[0][1] if rows else math.nan

    def query_range(self, promql: str, *, start: float, end: float,
                    step_s: float) -> list[tuple[dict[str, str], list[float]]]:
        """(labels, values) per series of a range query.

        Raises:
            PrometheusUnavailableError, PrometheusQueryError: see the module docstring.
        """
        data = self._get("/api/v1/query_range", {"query": promql, "start": start, "end": end,
                                                 "step": f"{step_s:g}s"})
        try:
            result = data["result"]
            if not isinstance(result, list):
                raise TypeError(f"result type {data.get('resultType')!r}")
            return [(s["metric"], [float(v) for _, v in s["values"]]) for s in result]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise PrometheusUnavailableError(f"Prometheus at {self.url}: not a range query "
                                             f"result: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        """Close the HTTP connection pool (when this client created it)."""
        if self._owns:
            self._client.close()
