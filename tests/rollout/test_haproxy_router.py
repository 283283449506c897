"""The haproxy router against a real HAProxy on loopback: exact splits, read-back, errors.

The order of the two weight commands (make-before-break: the raising one first) is checked on
a fake admin socket that records every command; the end-to-end proof under load, and the kill
between the two commands, are in ``tests/e2e/test_switch_loop.py``.
"""

from __future__ import annotations

import re
import socket
import socketserver
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from fakes import serve_text, serving
from test_controller_loop import ScriptedAnalyzer, start

from gates.verdict import Verdict
from rollout.controller import Controller
from rollout.errors import BadInputError, UnavailableError
from rollout.local.haproxy import start_haproxy
from rollout.local.processes import free_port
from rollout.machine import Phase, Plan, Weights
from rollout.routers.haproxy import HaproxyRouter, haproxy_command
from rollout.store import StateStore


def _color_server(color: str) -> ThreadingHTTPServer:
    return serve_text(lambda: color, "text/plain")


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


class _FakeAdminSocket(socketserver.ThreadingUnixStreamServer):
    """HAProxy's admin socket as the router uses it: one command per connection, recorded."""

    daemon_threads = True

    def __init__(self, path: Path, weights: dict[str, int]) -> None:
        self.weights = dict(weights)
        self.commands: list[str] = []
        self.lock = threading.Lock()
        super().__init__(str(path), _FakeAdminHandler)


class _FakeAdminHandler(socketserver.StreamRequestHandler):
    server: _FakeAdminSocket

    def handle(self) -> None:
        command = self.rfile.readline().decode().strip()
        with self.server.lock:
            self.server.commands.append(command)
            if m := re.fullmatch(r"set server sd/(\w+) weight (\d+)", command):
                self.server.weights[m.group(1)] = int(m.group(2))
                answer = ""
            elif m := re.fullmatch(r"get weight sd/(\w+)", command):
                w = self.server.weights[m.group(1)]
                answer = f"{w} (initial 100)\n"
            else:
                answer = "Unknown command.\n"
        self.wfile.write(answer.encode())


@pytest.fixture
def fake_socket(tmp_path: Path) -> Iterator[_FakeAdminSocket]:
    with serving(_FakeAdminSocket(tmp_path / "admin.sock", {"blue": 100, "green": 0})) as srv:
        yield srv


@pytest.mark.parametrize(("start", "target", "order"), [
    ((100, 0), (0, 100), ["set server sd/green weight 100", "set server sd/blue weight 0"]),
    ((0, 100), (100, 0), ["set server sd/blue weight 100", "set server sd/green weight 0"]),
    ((90, 10), (50, 50), ["set server sd/green weight 50", "set server sd/blue weight 50"]),
    ((50, 50), (90, 10), ["set server sd/blue weight 90", "set server sd/green weight 10"]),
    # A half-applied switch (a kill between the commands) is finished by lowering only.
    ((100, 100), (0, 100), ["set server sd/green weight 100", "set server sd/blue weight 0"]),
], ids=["100/0-to-0/100", "0/100-to-100/0", "90/10-to-50/50", "50/50-to-90/10",
        "100/100-to-0/100"])
def test_raising_command_is_sent_first(fake_socket: _FakeAdminSocket, start: tuple[int, int],
                                       target: tuple[int, int], order: list[str]) -> None:
    fake_socket.weights = {"blue": start[0], "green": start[1]}
    router = HaproxyRouter(fake_socket.server_address)
    router.set_weights(Weights(blue=target[0], green=target[1]))
    sets = [c for c in fake_socket.commands if c.startswith("set ")]
    assert sets == order
    assert router.get_weights() == Weights(blue=target[0], green=target[1])


def test_every_intermediate_state_serves(fake_socket: _FakeAdminSocket) -> None:
    """Replaying the recorded commands: no state between two commands is 0/0."""
    router = HaproxyRouter(fake_socket.server_address)
    splits = [(100, 0), (0, 100), (100, 0), (90, 10), (50, 50), (0, 100), (10, 90), (100, 0)]
    for blue, green in splits:
        router.set_weights(Weights(blue=blue, green=green))
    state = {"blue": 100, "green": 0}
    for command in fake_socket.commands:
        if m := re.fullmatch(r"set server sd/(\w+) weight (\d+)", command):
            state[m.group(1)] = int(m.group(2))
            assert state["blue"] + state["green"] > 0, fake_socket.commands


def test_zero_zero_is_refused_before_any_command(fake_socket: _FakeAdminSocket) -> None:
    with pytest.raises(BadInputError, match="0/0"):
        HaproxyRouter(fake_socket.server_address).set_weights(Weights(blue=0, green=0))
    assert fake_socket.commands == []


class FlakySocket:
    """An admin socket in front of HAProxy's that refuses the first ``refuse`` ``set``
    commands the way HAProxy refuses one (a non-empty answer), then forwards everything."""

    def __init__(self, target: Path, path: Path, refuse: int) -> None:
        self.target, self.path, self.left, self.refused = target, path, refuse, 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                command = conn.recv(4096).decode().strip()
                if command.startswith("set") and self.left > 0:
                    self.left -= 1
                    self.refused += 1
                    conn.sendall(b"Permission denied.\n")
                    continue
                conn.sendall(haproxy_command(self.target, command).encode() + b"\n")

    def close(self) -> None:
        self.server.close()


def test_a_refused_command_is_retried_and_the_rollout_still_promotes(
        lb: tuple[HaproxyRouter, int], tmp_path: Path) -> None:
    """Faults are data: one refusal on HAProxy's socket used to roll the release back."""
    router, port = lb
    flaky = FlakySocket(router.socket_path, tmp_path / "flaky.sock", refuse=1)
    store, waits = StateStore(tmp_path / "state"), []
    try:
        ctl = Controller(store, HaproxyRouter(flaky.path, sleep=waits.append),
                         ScriptedAnalyzer(iter([Verdict.PASS] * 5)))
        final = ctl.run(start(store, Plan(weights=(50, 100))))
    finally:
        flaky.close()
    assert final.phase is Phase.PROMOTED, final.reason
    assert flaky.refused == 1 and waits == [0.2]
    assert router.get_weights() == Weights(blue=0, green=100)
    assert _split(port, 10) == Counter(green=10)
