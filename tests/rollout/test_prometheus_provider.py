"""The prometheus provider against a real Prometheus scraping loopback metric endpoints."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import serve_text

from gates.error_rate import ErrorRateGateSpec
from gates.latency import LatencyGateSpec
from gates.verdict import Verdict
from rollout.local.processes import ManagedProcess, free_port
from rollout.local.prometheus import start_prometheus
from rollout.metrics.prometheus import PrometheusClient, PrometheusProvider

BUCKETS = [round(2.0 * 1.1**i, 3) for i in range(12)]  # 2.0 .. 5.7 s, 10% apart


class FakeServer:
    """Exposes a histogram whose counts grow at ``rate`` req/s with latencies ``median * e^z``.

    Counts follow the lognormal CDF exactly, so the true P95 is known: ``median * e^(1.645 s)``.
    """

    def __init__(self, median: float, sigma: float = 0.05, rate: float = 20.0,
                 error_fraction: float = 0.0) -> None:
        self.median, self.sigma, self.rate, self.err = median, sigma, rate, error_fraction
        self.t0 = time.monotonic()
        self.http = serve_text(self.exposition)

    def exposition(self) -> str:
        n = int(self.rate * (time.monotonic() - self.t0)) + 1
        lines = []
        for le in BUCKETS:
            z = math.log(le / self.median) / self.sigma
            cdf = 0.5 * (1 + math.erf(z / math.sqrt(2)))
            lines.append(f'sd_request_duration_seconds_bucket{{le="{le}"}} {int(n * cdf)}')
        lines.append(f'sd_request_duration_seconds_bucket{{le="+Inf"}} {n}')
        lines.append(f"sd_request_duration_seconds_count {n}")
        bad = int(n * self.err)
        lines.append(f'sd_requests_total{{code="200"}} {n - bad}')
        lines.append(f'sd_requests_total{{code="500"}} {bad}')
        return "\n".join(lines) + "\n"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.http.server_port}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, dict[str, FakeServer]]]:
    servers = {"blue": FakeServer(2.5), "green": FakeServer(3.3, error_fraction=0.1),
               "same": FakeServer(2.5)}
    port = free_port()
    root: Path = tmp_path_factory.mktemp("prom")
    proc: ManagedProcess = start_prometheus(root, port=port, targets={
        "blue": servers["blue"].hostport, "green": servers["green"].hostport,
        "same": servers["same"].hostport, "down": "127.0.0.1:1"})
    client = PrometheusClient(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    # Prometheus applies new targets after its ~5 s discovery throttle; wait for 4 scrapes.
    def scrapes() -> float:
        return client.value('min(count_over_time(up{color=~"blue|green|same"}[1m]))')

    while time.monotonic() < deadline and not scrapes() >= 4:
        time.sleep(0.5)
    try:
        yield port, servers
    finally:
        proc.stop()
        for s in servers.values():
            s.http.shutdown()


def provider(port: int, **kw: object) -> PrometheusProvider:
    return PrometheusProvider(PrometheusClient(f"http://127.0.0.1:{port}"), **kw)  # type: ignore[arg-type]


def test_slower_green_fails_live_latency_and_error_rate(stack: tuple[int, dict]) -> None:
    port, _ = stack
    gates = [LatencyGateSpec(name="p95", source="prometheus"), ErrorRateGateSpec(maxRate=0.05)]
    out = provider(port).evaluate(gates, window_seconds=5)
    assert out["p95"].verdict is Verdict.FAIL, out["p95"].reason
    assert "green" in out["p95"].reason and "limit 1.00" in out["p95"].reason  # no hidden slack
    assert out["error-rate-live"].verdict is Verdict.FAIL
    # The fake server answers 10% of requests with 500s; increase() extrapolates a little.
    rate = float(re.search(r"rate ([0-9.]+)%", out["error-rate-live"].reason).group(1))  # type: ignore[union-attr]
    assert 7.0 <= rate <= 13.0


def test_ceiling_and_canary_gates(stack: tuple[int, dict]) -> None:
    port, _ = stack
    out = provider(port).evaluate(
        [LatencyGateSpec(name="p95", source="prometheus", maxRatio=2.0, ceilingSeconds=3.0),
         LatencyGateSpec(name="canary-only")], window_seconds=5)
    assert out["p95"].verdict is Verdict.FAIL and "ceiling" in out["p95"].reason
    assert "canary-only" not in out


def test_down_target_and_missing_series_are_nodata_never_pass(stack: tuple[int, dict]) -> None:
    port, _ = stack
    p = provider(port)
    # Point the provider's "green" at colours that are down / absent by relabelling queries.
    p.client = _Relabel(p.client, "green", "down")
    r = p.evaluate([LatencyGateSpec(name="p95", source="prometheus")], window_seconds=5)["p95"]
    assert r.verdict is Verdict.NODATA and "down" in r.reason
    p.client = _Relabel(PrometheusClient(f"http://127.0.0.1:{port}"), "green", "absent")
    r = p.evaluate([LatencyGateSpec(name="p95", source="prometheus")], window_seconds=5)["p95"]
    assert r.verdict is Verdict.NODATA and "no scrape target" in r.reason


def test_healthy_green_passes_and_too_few_requests_is_nodata(stack: tuple[int, dict]) -> None:
    port, _ = stack
    p = provider(port)
    p.client = _Relabel(p.client, "green", "same")
    # Two identical servers scraped at slightly different moments: histogram quantiles differ
    # by a few percent, so a healthy live gate needs an explicit margin (docs/policy.md).
    same = LatencyGateSpec(name="p95", source="prometheus", tolerance=0.15)
    r = p.evaluate([same], window_seconds=5)["p95"]
    assert r.verdict is Verdict.PASS, r.reason
    p.min_requests = 10_000
    r = p.evaluate([LatencyGateSpec(name="p95", source="prometheus")], window_seconds=5)["p95"]
    assert r.verdict is Verdict.NODATA and "requests" in r.reason


def test_unreachable_prometheus_is_error_with_count() -> None:
    p = PrometheusProvider(PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=0.5),
                           consecutive_error_limit=0)
    r = p.evaluate([LatencyGateSpec(name="p95", source="prometheus")], window_seconds=5)["p95"]
    assert (r.verdict, r.errors) == (Verdict.ERROR, 1)


class _Relabel(PrometheusClient):
    """Rewrites color="<from>" to color="<to>" in every query (to aim at other series)."""

    def __init__(self, inner: PrometheusClient, old: str, new: str) -> None:
        self.inner, self.old, self.new = inner, old, new
        self.url = inner.url

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        return self.inner.query(promql.replace(f'color="{self.old}"', f'color="{self.new}"'))


class _FaultyFront:
    """A loopback HTTP proxy in front of Prometheus that answers the first ``faults``
    requests badly (``"503"``: HTTP 503; ``"hang"``: no answer for ``hang_s``), then forwards."""

    def __init__(self, upstream: str, faults: list[str], hang_s: float = 3.0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        import httpx

        front = self
        self.faults, self.seen = list(faults), 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                front.seen += 1
                fault = front.faults.pop(0) if front.faults else None
                if fault == "hang":
                    time.sleep(hang_s)
                    return
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Retry-After", "0.2")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                r = httpx.get(upstream + self.path, timeout=10)
                self.send_response(r.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_port}"


def test_a_503_and_a_timeout_are_retried_and_the_live_gates_still_pass(
        stack: tuple[int, dict]) -> None:
    port, _ = stack
    front = _FaultyFront(f"http://127.0.0.1:{port}", ["503", "hang"])
    try:
        p = PrometheusProvider(PrometheusClient(front.url, timeout=1.0))
        p.client = _Relabel(p.client, "green", "same")
        gates = [LatencyGateSpec(name="p95", source="prometheus", tolerance=0.15),
                 ErrorRateGateSpec(maxRate=0.05)]  # margin: see the healthy-green test
        out = p.evaluate(gates, window_seconds=30)
    finally:
        front.http.shutdown()
    assert out["p95"].verdict is Verdict.PASS, out["p95"].reason
    assert out["p95"].errors == 2 and "after 2 measurement error(s)" in out["p95"].reason
    assert out["error-rate-live"].verdict is Verdict.PASS, out["error-rate-live"].reason
    assert out["error-rate-live"].errors == 0


def test_a_prometheus_down_for_good_is_error_past_the_limit_with_count_and_reason() -> None:
    slept: list[float] = []
    p = PrometheusProvider(PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=0.5),
                           consecutive_error_limit=3, sleep=slept.append)
    r = p.evaluate([LatencyGateSpec(name="p95", source="prometheus")], window_seconds=60)["p95"]
    assert (r.verdict, r.errors) == (Verdict.ERROR, 4)
    assert "ConnectError" in r.reason and "4 measurement error(s) in a row, limit 3" in r.reason
    assert slept == [0.5, 1.0, 2.0]  # backoff between the attempts
    # the retries never outlast the analysis window
    slept.clear()
    r = p.evaluate([LatencyGateSpec(name="p95", source="prometheus")], window_seconds=1)["p95"]
    assert r.verdict is Verdict.ERROR and r.errors == 2 and slept == [0.5]


# --- maxRatio x (1 + tolerance) on the live path ---------------------------------------------


class _Answers(PrometheusClient):
    """Answers the provider's queries without a Prometheus: fresh targets, 100 requests per
    arm, blue's quantile 1.0 s and green's ``green_s``."""

    def __init__(self, green_s: float) -> None:
        super().__init__("http://prometheus.invalid")
        self.green_s = green_s

    def value(self, promql: str) -> float:
        if promql.startswith("max(up"):
            return 1.0
        if promql.startswith("time()"):
            return 0.0
        if promql.startswith("sum(increase("):
            return 100.0
        return self.green_s if 'color="green"' in promql else 1.0


def _live(green_s: float, tolerance: float) -> tuple[Verdict, str]:
    gate = LatencyGateSpec(name="p95", source="prometheus", maxRatio=2.0, tolerance=tolerance)
    r = PrometheusProvider(_Answers(green_s)).evaluate([gate], window_seconds=5)["p95"]
    return r.verdict, r.reason


def test_live_gate_tolerance_15_percent_on_max_ratio_2_judges_against_2_3() -> None:
    verdict, reason = _live(2.2, 0.15)
    assert verdict is Verdict.PASS and "= 2.20 (limit 2.30)" in reason
    assert _live(2.4, 0.15)[0] is Verdict.FAIL
    verdict, reason = _live(2.2, 0.0)
    assert verdict is Verdict.FAIL and "(limit 2.00)" in reason


def test_live_gate_zero_tolerance_judges_against_exactly_max_ratio() -> None:
    assert _live(2.0, 0.0)[0] is Verdict.PASS  # at the limit: not above it
    assert _live(2.01, 0.0)[0] is Verdict.FAIL


def test_the_provider_has_no_tolerance_of_its_own() -> None:
    import inspect

    assert "tolerance" not in inspect.signature(PrometheusProvider).parameters
    assert not hasattr(PrometheusProvider(_Answers(1.0)), "tolerance")
