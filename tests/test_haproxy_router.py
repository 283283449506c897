"""The haproxy router against a real HAProxy on loopback: exact splits, read-back, errors."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from rollout.errors import BadInputError, UnavailableError
from rollout.local.haproxy import start_haproxy
from rollout.local.processes import free_port
from rollout.machine import Weights
from rollout.routers.haproxy import HaproxyRouter, haproxy_command


def _color_server(color: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = color.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture
def lb(tmp_path: Path) -> Iterator[tuple[HaproxyRouter, int]]:
    blue, green = _color_server("blue"), _color_server("green")
    port = free_port()
    proc, sock = start_haproxy(tmp_path, frontend_port=port,
                               blue=f"127.0.0.1:{blue.server_port}",
                               green=f"127.0.0.1:{green.server_port}")
    try:
        yield HaproxyRouter(sock), port
    finally:
        proc.stop()
        blue.shutdown()
        green.shutdown()


def _split(port: int, n: int) -> Counter[str]:
    with httpx.Client() as c:
        return Counter(c.get(f"http://127.0.0.1:{port}/").text for _ in range(n))


def test_starts_all_blue_and_reads_back(lb: tuple[HaproxyRouter, int]) -> None:
    router, port = lb
    router.check()
    assert router.get_weights() == Weights(blue=100, green=0)
    assert _split(port, 20) == Counter(blue=20)


def test_split_is_applied_exactly(lb: tuple[HaproxyRouter, int]) -> None:
    router, port = lb
    router.set_weights(Weights(blue=90, green=10))
    assert router.get_weights() == Weights(blue=90, green=10)
    split = _split(port, 200)
    # Weighted round-robin keeps its position across a weight change: exact up to one request.
    assert split["blue"] + split["green"] == 200
    assert abs(split["green"] - 20) <= 1
    router.set_weights(Weights(blue=0, green=100))
    assert _split(port, 30) == Counter(green=30)


def test_unknown_server_is_bad_input(lb: tuple[HaproxyRouter, int]) -> None:
    router, _ = lb
    wrong = HaproxyRouter(router.socket_path, backend="sd", green_server="nope")
    with pytest.raises(BadInputError, match="does not know server sd/nope"):
        wrong.check()


def test_missing_socket(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        HaproxyRouter(tmp_path / "missing.sock").check()
    with pytest.raises(UnavailableError):
        haproxy_command(tmp_path / "missing.sock", "show info")
