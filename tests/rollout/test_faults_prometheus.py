"""Live gates against a Prometheus that answers garbage: never a pass, never a traceback.

A real loopback HTTP server stands in for Prometheus' query API: the freshness queries
(``up``, scrape age) answer healthy values, and the measurement queries (request counts,
histogram quantiles) answer what hypothesis draws from what a broken or hostile Prometheus or
proxy sends: NaN, infinities, negative or non-numeric values, empty vectors, wrong result
types, missing fields, errors, HTML. Whatever comes back, the provider's verdict is never
``pass`` (``nodata``, ``error`` for a typed measurement failure, or ``fail`` where the garbage
happens to read as a bad measurement), and nothing is raised.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from fakes import reply
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gates.error_rate import ErrorRateGateSpec
from gates.latency import LatencyGateSpec
from gates.verdict import Verdict
from rollout.metrics.prometheus import PrometheusClient, PrometheusProvider

_SAMPLE = st.sampled_from(["NaN", "+Inf", "-Inf", "-1", "abc", "", "1e400", None, 7, []])
_BROKEN: st.SearchStrategy[tuple[int, str]] = st.one_of(
    st.builds(lambda v: (200, json.dumps({"status": "success", "data": {
        "resultType": "vector", "result": [{"metric": {}, "value": [time.time(), v]}]}})),
        _SAMPLE),
    st.just((200, json.dumps({"status": "success", "data": {"resultType": "vector",
                                                             "result": []}}))),
    st.just((200, json.dumps({"status": "success", "data": {"resultType": "matrix",
                                                             "result": {"a": 1}}}))),
    st.just((200, json.dumps({"status": "success", "data": {"resultType": "vector",
                                                             "result": [{"value": []}]}}))),
    st.just((200, json.dumps({"status": "success"}))),
    st.just((200, json.dumps([1, 2]))),
    st.just((200, "<html>gateway</html>")),
    st.just((400, json.dumps({"status": "error", "error": "parse error"}))),
    st.just((500, "internal")), st.just((503, "")), st.just((429, "slow down")),
    st.binary(max_size=50).map(lambda b: (200, b.decode("latin-1"))))


class FakePrometheus:
    """Answers the freshness queries with ``up`` and ``age`` (healthy: 1 and 1 s) and the
    measurement queries with ``broken``."""

    def __init__(self) -> None:
        self.broken: tuple[int, str] = (200, "")
        self.up, self.age = "1", "1"
        self.queries: list[str] = []
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query).get("query", [""])[0]
                me.queries.append(query)
                if query.startswith(("max(up", "time() -")):
                    status, body = 200, _vector(me.up if query.startswith("max") else me.age)
                else:
                    status, body = me.broken
                reply(self, status, body.encode("latin-1"))

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _vector(value: Any) -> str:
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}, "value": [time.time(), value]}]}})


@pytest.fixture(scope="module")
def prom() -> Iterator[FakePrometheus]:
    p = FakePrometheus()
    yield p
    p.server.shutdown()


GATES = [LatencyGateSpec(name="p95", source="prometheus"),
         ErrorRateGateSpec(name="errors", maxRate=0.05)]


def _provider(prom: FakePrometheus) -> PrometheusProvider:
    return PrometheusProvider(PrometheusClient(prom.url, timeout=2), consecutive_error_limit=1,
                              sleep=lambda _s: None)


@settings(max_examples=80, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
@given(_BROKEN)
def test_garbage_measurements_are_nodata_or_error_never_pass(prom: FakePrometheus,
                                                             broken: tuple[int, str]) -> None:
    prom.broken = broken
    out = _provider(prom).evaluate(GATES, window_seconds=5)
    assert set(out) == {"p95", "errors-live"}
    for name, r in out.items():
        assert r.verdict is not Verdict.PASS, (name, broken, r)
        assert r.reason


def test_the_fake_is_healthy_when_asked_so_a_pass_is_possible(prom: FakePrometheus) -> None:
    """The control: with sane answers the same provider does pass, so the test above can
    fail."""
    prom.broken = (200, _vector("100"))
    out = _provider(prom).evaluate(GATES, window_seconds=5)
    assert out["p95"].verdict is Verdict.PASS, out["p95"].reason


@pytest.mark.parametrize(("up", "age", "why"), [
    ("1", "120", "stale"), ("1", "NaN", "stale"), ("0", "1", "down"),
    ("NaN", "1", "no scrape target")])
def test_stale_down_or_absent_targets_are_nodata_whatever_the_measurements(
        prom: FakePrometheus, up: str, age: str, why: str) -> None:
    prom.broken, prom.up, prom.age = (200, _vector("100")), up, age
    try:
        out = _provider(prom).evaluate(GATES, window_seconds=5)
    finally:
        prom.up, prom.age = "1", "1"
    for r in out.values():
        assert r.verdict is Verdict.NODATA and why in r.reason, r


def test_a_prometheus_that_never_answers_is_error_within_the_window() -> None:
    """Timeouts: a listener that accepts and never answers; the retries end in time."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        client = PrometheusClient(f"http://127.0.0.1:{s.getsockname()[1]}", timeout=0.3)
        t0 = time.monotonic()
        out = PrometheusProvider(client, consecutive_error_limit=2).evaluate(
            GATES, window_seconds=3)
    assert time.monotonic() - t0 < 8
    assert all(r.verdict is Verdict.ERROR and r.errors >= 1 for r in out.values()), out
