"""Bounded reads (gates.bounded) over real sockets: a trickling or endless answer is cut off at
the exchange's deadline or the body cap, at every place the controller reads another service
(admission, canary, Prometheus), and each place maps the broken bound to its own verdict."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fakes import url_policy

from gates.bounded import (
    BoundedReadError,
    DeadlineExceededError,
    ResponseTooLargeError,
    aread_bounded,
    read_bounded,
)
from gates.canary.loopback import LoopbackBehaviour, LoopbackServer
from gates.canary.prompts import Prompt
from gates.canary.runner import CanaryConfig, run_canary_sync
from gates.error_rate import ErrorRateGateSpec
from gates.latency import LatencyGateSpec
from gates.prometheus import PrometheusUnavailableError
from gates.utilization import PrometheusUtilization
from gates.verdict import Verdict
from rollout.analysis import PolicyAnalyzer
from rollout.machine import Plan, RolloutStatus
from rollout.metrics.prometheus import PrometheusClient, PrometheusProvider
from rollout.policy.loader import parse_policy

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = json.loads((ROOT / "bench/results/snapshot_h100.json").read_text())
PIPELINE = {"modules": {"unet": {"device": "cuda:0", "dtype": "torch.float16",
                                 "attention": "sdpa"}}}
CAPS = json.dumps({"snapshot": SNAPSHOT, "pipeline": PIPELINE, "degraded": False}).encode()
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
MiB = 1024 * 1024

# What a server does with one request: (socket, method, path) -> None; it writes the answer.
Answer = Callable[[socket.socket, str, str], None]


def complete(body: bytes) -> Answer:
    def answer(conn: socket.socket, method: str, path: str) -> None:
        conn.sendall(HEAD + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return answer


def trickle(every_s: float = 2.0, *, headers: bool = True) -> Answer:
    """Headers at once (or ``headers=False``: byte by byte too), then one byte every
    ``every_s`` seconds, forever: each read is quick, the answer never ends."""
    def answer(conn: socket.socket, method: str, path: str) -> None:
        if headers:
            conn.sendall(HEAD + b"\r\n")
        else:
            for b in HEAD:
                conn.sendall(bytes([b]))
                time.sleep(every_s)
        while True:
            conn.sendall(b" ")
            time.sleep(every_s)
    return answer


def endless(declared: int | None = None) -> Answer:
    """Zeros as fast as the client reads them, forever (``declared``: a Content-Length)."""
    length = b"" if declared is None else f"Content-Length: {declared}\r\n".encode()
    zeros = bytes(64 * 1024)

    def answer(conn: socket.socket, method: str, path: str) -> None:
        conn.sendall(HEAD + length + b"\r\n")
        while True:
            conn.sendall(zeros)
    return answer


class RawServer:
    """A loopback HTTP/1.1 server on raw sockets, one thread per connection, one answer per
    connection; ``routes`` maps a path to its :data:`Answer` (the rest: ``default``)."""

    def __init__(self, routes: dict[str, Answer], default: Answer | None = None) -> None:
        self.routes, self.default = routes, default or complete(b"{}")
        self.hits: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = next((int(v) for k, _, v in (x.partition(":") for x in lines[1:])
                               if k.strip().lower() == "content-length"), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                method, path = lines[0].split(" ")[:2]
                path = path.split("?")[0]
                self.hits.append(path)
                self.routes.get(path, self.default)(conn, method, path)
            except OSError:  # the client hung up: what a bounded read does
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def servers() -> Iterator[Callable[..., RawServer]]:
    made: list[RawServer] = []

    def make(routes: dict[str, Answer], default: Answer | None = None) -> RawServer:
        made.append(RawServer(routes, default))
        return made[-1]

    yield make
    for s in made:
        s.close()


# -- the module --------------------------------------------------------------------------------

def test_a_complete_answer_is_read_and_bad_bounds_are_refused(
        servers: Callable[..., RawServer]) -> None:
    srv = servers({"/x": complete(b'{"a": 1}')})
    with httpx.Client() as client:
        r = read_bounded(client, client.build_request("GET", srv.url + "/x"), deadline_s=5,
                         max_bytes=8)
        assert (r.status_code, r.json(), r.is_success) == (200, {"a": 1}, True)
        with pytest.raises(ResponseTooLargeError, match="7 bytes cap"):  # Content-Length: 8
            read_bounded(client, client.build_request("GET", srv.url + "/x"), deadline_s=5,
                         max_bytes=7)
        for kw in ({"deadline_s": 0.0, "max_bytes": 1}, {"deadline_s": 1.0, "max_bytes": 0}):
            with pytest.raises(ValueError):
                read_bounded(client, client.build_request("GET", srv.url), **kw)


@pytest.mark.parametrize("headers", [True, False], ids=["trickled-body", "trickled-headers"])
def test_sync_read_of_a_trickle_ends_at_the_deadline_not_a_read_later(
        servers: Callable[..., RawServer], headers: bool) -> None:
    srv = servers({}, trickle(0.4, headers=headers))
    with httpx.Client() as client:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceededError, match=r"1\.5 s deadline") as e:
            read_bounded(client, client.build_request("GET", srv.url), deadline_s=1.5,
                         max_bytes=MiB)
    assert 1.5 <= time.monotonic() - t0 < 1.9
    assert e.value.status_code == (200 if headers else None)


def test_async_read_is_cut_at_its_deadline_or_its_cap(
        servers: Callable[..., RawServer]) -> None:
    slow, flood = servers({}, trickle(0.4)), servers({}, endless())

    async def main() -> tuple[BaseException, BaseException, float]:
        async with httpx.AsyncClient() as client:
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceededError) as late:
                await aread_bounded(client, client.build_request("GET", slow.url),
                                    max_bytes=MiB, deadline_s=1.0)
            took = time.monotonic() - t0
            with pytest.raises(ResponseTooLargeError) as big:
                await aread_bounded(client, client.build_request("GET", flood.url),
                                    max_bytes=MiB)
            return late.value, big.value, took

    late, big, took = asyncio.run(main())
    assert 1.0 <= took < 1.4 and "HTTP 200" in str(late)
    assert isinstance(big, BoundedReadError) and "1 MiB cap" in str(big)


# -- admission -----------------------------------------------------------------------------------

def admit(blue: RawServer, green: RawServer, tmp_path: Path, limits: str) -> tuple[
        dict[str, tuple[Verdict, str]], float]:
    policy = parse_policy(url_policy("adm", blue.url, green.url, f"""
  steps: [{{weight: 0}}]
  limits: {limits}
  gates:
    - {{type: capability, name: versions, fingerprint: same-as-blue}}
    - {{type: latency}}
"""))

    class Targets:
        def endpoints(self, color: str) -> list[str]:
            return [(blue if color == "blue" else green).url]

    analyzer = PolicyAnalyzer(policy, Targets(), records_dir=tmp_path)  # type: ignore[arg-type]
    t0 = time.monotonic()
    obs = analyzer.admit(RolloutStatus(name="adm", plan=Plan(weights=(0,))))
    took = time.monotonic() - t0
    assert obs.error is None
    return {name: (g.verdict, g.reason) for name, g in obs.gates.items()}, took


def test_a_trickling_capabilities_is_refused_by_admission_within_the_deadline(
        servers: Callable[..., RawServer], tmp_path: Path) -> None:
    blue = servers({"/capabilities": complete(CAPS)})
    green = servers({"/capabilities": trickle(2.0)})
    gates, took = admit(blue, green, tmp_path, "{exchangeSeconds: 2}")
    assert took < 2 + 1.5
    assert gates["green-ready"][0] is Verdict.FAIL
    assert gates["execution-path"][0] is Verdict.ERROR
    assert gates["versions"][0] is Verdict.ERROR
    for name in ("green-ready", "execution-path", "versions"):
        assert "within the 2 s deadline" in gates[name][1], gates[name]
        assert f"{green.url}/capabilities" in gates[name][1]
    assert green.hits.count("/capabilities") == 1


def test_an_endless_capabilities_is_cut_at_the_cap_without_growing_memory(
        servers: Callable[..., RawServer], tmp_path: Path) -> None:
    blue = servers({"/capabilities": complete(CAPS)})
    green = servers({"/capabilities": endless()})
    peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gates, took = admit(blue, green, tmp_path, "{exchangeSeconds: 20}")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kib) / 1024
    assert took < 5  # the cap, not the 20 s deadline, ended the read
    assert grown_mib < 1 + 32, f"peak RSS grew {grown_mib:.0f} MiB reading a 1 MiB cap"
    assert gates["versions"][0] is Verdict.ERROR
    for name in ("green-ready", "execution-path", "versions"):
        assert "1 MiB cap" in gates[name][1], gates[name]


def test_limits_defaults_and_refusal_of_infinite_numbers() -> None:
    doc = """
apiVersion: rollout-gates.dev/v1alpha1
kind: RolloutPolicy
metadata: {name: lim}
spec:
  targets: {blue: {type: url, url: "http://b"}, green: {type: url, url: "http://g"}}
  steps: [{weight: 0%s}]
  gates: [{type: latency}]
"""
    limits = parse_policy(doc % "").spec.limits
    assert (limits.exchange_seconds, limits.capabilities_max_bytes, limits.canary_max_bytes,
            limits.prometheus_max_bytes) == (30.0, MiB, 64 * MiB, 16 * MiB)
    for bad in (", pauseSeconds: .inf", ", pauseSeconds: .nan"):
        with pytest.raises(Exception, match="finite"):
            parse_policy(doc % bad)


# -- canary ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("declared", [None, 10**10], ids=["endless", "declared-too-long"])
def test_an_endless_canary_body_is_a_bad_payload_naming_the_cap(
        servers: Callable[..., RawServer], tmp_path: Path, declared: int | None) -> None:
    green = servers({}, endless(declared))
    prompts = tuple(Prompt(id=f"p{i}", prompt=f"p {i}", seed=i, width=64, height=64, steps=4)
                    for i in range(3))
    with LoopbackServer(LoopbackBehaviour(service_s=0.01)) as blue:
        t0 = time.monotonic()
        r = run_canary_sync(CanaryConfig(
            blue_url=blue.url, green_url=green.url, prompts=prompts, warmup_requests=0,
            concurrency=1, max_requests=3, max_body_bytes=MiB, timeout_s=10,
            latency_gates=(LatencyGateSpec(),), error_gate=ErrorRateGateSpec(max_rate=0.5)),
            records_dir=tmp_path)
    assert time.monotonic() - t0 < 5
    assert {k for k, n in r.errors["green"].items() if n} == {"bad_payload"}
    rows = [json.loads(x) for x in (tmp_path / "green.jsonl").read_text().splitlines()]
    assert len(rows) == r.errors["green"]["bad_payload"] >= 1
    for row in rows:
        assert row["error"] == "bad_payload" and row["status"] == 200
        assert "1 MiB cap" in row["detail"]


# -- Prometheus -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("answer", "says"), [(trickle(0.3), "within the 1 s deadline"),
                                              (endless(), "64 KiB cap")],
                         ids=["trickling", "oversized"])
def test_prometheus_answering_too_slowly_or_too_much_is_the_mapped_error(
        servers: Callable[..., RawServer], answer: Answer, says: str) -> None:
    prom = servers({}, answer)
    client = PrometheusClient(prom.url, timeout=1.0, max_bytes=64 * 1024)
    t0 = time.monotonic()
    with pytest.raises(PrometheusUnavailableError, match=says):
        client.query("up")
    gate = PrometheusProvider(client, consecutive_error_limit=0).evaluate(
        [LatencyGateSpec(name="p95", source="prometheus")], window_seconds=5)["p95"]
    assert (gate.verdict, gate.errors) == (Verdict.ERROR, 1) and says in gate.reason
    util = PrometheusUtilization(prom.url, timeout_s=1.0, max_bytes=64 * 1024)
    samples = util.query("gpu_util", start=0, end=60)
    util.close()
    assert samples.gpus == () and samples.error is not None and says in samples.error
    assert time.monotonic() - t0 < 3 * 1.0 + 1.5  # three exchanges, each at most 1 s
    client.close()


def test_prometheus_answering_something_else_is_unavailable_not_a_crash(
        servers: Callable[..., RawServer]) -> None:
    prom = servers({}, complete(b"<html>proxy login</html>"))
    with pytest.raises(PrometheusUnavailableError, match="not a query result"):
        PrometheusClient(prom.url).query("up")
