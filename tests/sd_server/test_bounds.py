"""The SD server's own bounds, over HTTP against a real server process (tiny model, CPU).

What ``test_serving`` does not already cover: the per-request timeout (504, queue wait
included), a full queue (429 with ``Retry-After``), the connection limit (uvicorn's 503 past
``--max-connections``, probes included), a streamed body without a length past the cap, the
A1111 endpoint's field bounds, and that no probe, metric or error leaks the bearer token or the
process environment. One server with an added latency longer than its request timeout, so
every generation it accepts ends in a 504 and the queue stays observable.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sdserver_harness import TOKEN, Server, metric, server_env, start_server

OPENAI = "/v1/images/generations"
A1111 = "/sdapi/v1/txt2img"
TIMEOUT_S, LATENCY_S, CONNECTIONS = 2.5, 4.0, 8
SECRETS = {"AWS_SECRET_ACCESS_KEY": "leak-aws-7f3e0c", "HF_TOKEN": "hf_leak_91c2d",
           "DATABASE_URL": "postgres://u:pw-leak-55aa@db/x"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {**server_env(), **SECRETS, "SD_SERVER_AUTH_TOKEN": TOKEN}
    s = start_server(["--queue-size", "1", "--max-batch", "1", "--max-wait-ms", "0",
                      "--max-connections", str(CONNECTIONS), "--request-timeout", str(TIMEOUT_S),
                      "--fault-latency-ms", str(LATENCY_S * 1000)],
                     tmp_path_factory.mktemp("bounds") / "server.log", env=env)
    yield s
    s.stop()


def _gen(server: Server, **body: object) -> httpx.Response:
    with server.client(TOKEN) as c:
        return c.post(OPENAI, json={"prompt": "x", "size": "64x64", "steps": 1, **body},
                      timeout=60)


def _wait(server: Server, name: str, value: float) -> None:
    deadline = time.monotonic() + 30
    while metric(httpx.get(server.url + "/metrics").text, name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.02)


def test_a_request_past_the_timeout_is_a_504_on_time(server: Server) -> None:
    t0 = time.monotonic()
    r = _gen(server, seed=1)
    took = time.monotonic() - t0
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "timeout" and f"{TIMEOUT_S:g} s" in r.text
    assert TIMEOUT_S - 0.1 <= took < TIMEOUT_S + 2


def test_a_full_queue_is_a_429_with_retry_after_and_frees_its_slot(server: Server) -> None:
    _wait(server, "sd_in_flight_requests", 0)
    _wait(server, "sd_queue_depth", 0)
    results: dict[str, httpx.Response] = {}
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, _gen(server, seed=k)))
               for k in (2, 3)]
    threads[0].start()
    _wait(server, "sd_in_flight_requests", 1)
    threads[1].start()
    _wait(server, "sd_queue_depth", 1)
    rejected = _gen(server, seed=4)
    assert rejected.status_code == 429, rejected.text
    assert int(rejected.headers["retry-after"]) >= 1
    assert rejected.json()["error"]["type"] == "queue_full"
    for t in threads:
        t.join(timeout=30)
    assert [results[k].status_code for k in (2, 3)] == [504, 504]
    # The timed-out queued job left the queue at once, not when the worker reached it.
    assert metric(httpx.get(server.url + "/metrics").text, "sd_queue_depth") == 0


def test_connections_past_the_limit_get_503_and_recover(server: Server) -> None:
    idle = [socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
            for _ in range(CONNECTIONS)]
    try:
        over = httpx.get(server.url + "/healthz")
    finally:
        for s in idle:
            s.close()
    assert over.status_code == 503
    deadline = time.monotonic() + 10
    while httpx.get(server.url + "/healthz").status_code != 200:
        assert time.monotonic() < deadline, "the server never took connections again"
        time.sleep(0.05)


def test_a_streamed_body_without_a_length_is_cut_at_the_cap(server: Server) -> None:
    def body() -> Iterator[bytes]:  # chunked: no Content-Length to refuse up front
        yield b'{"prompt": "'
        for _ in range(10_000):  # 10 MB if read to the end
            yield b"y" * 1024

    with server.client(TOKEN) as c:
        r = c.post(OPENAI, content=body(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "body_too_large"


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "x", "width": 2048}, "width"),
    ({"prompt": "x", "height": 60}, "height"),
    ({"prompt": "x", "steps": 101}, "steps"),
    ({"prompt": "x", "batch_size": 9}, "batch_size"),
    ({"prompt": "x" * 2001}, "prompt"),
])
def test_a1111_fields_are_bounded_with_the_field_named(server: Server, body: dict[str, object],
                                                       param: str) -> None:
    with server.client(TOKEN) as c:
        r = c.post(A1111, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_no_probe_metric_or_error_leaks_the_token_or_the_environment(server: Server,
                                                                     tmp_path: Path) -> None:
    with server.client() as anonymous, server.client("wrong") as wrong:
        bodies = {p: anonymous.get(p).text for p in ("/healthz", "/readyz", "/capabilities",
                                                     "/metrics", "/nope")}
        bodies["401"] = anonymous.post(OPENAI, json={"prompt": "x"}).text
        bodies["401-wrong"] = wrong.post(OPENAI, json={"prompt": "x"}).text
    with server.client(TOKEN) as c:
        bodies["400"] = c.post(OPENAI, json={"prompt": "x", "n": 99}).text
    assert '"auth_required":true' in bodies["/capabilities"].replace(" ", "")
    for where, text in bodies.items():
        for secret in (TOKEN, *SECRETS.values()):
            assert secret not in text, f"{where} leaks {secret}"
        for name in SECRETS:
            assert name not in text, f"{where} names the environment variable {name}"
