"""The HAProxy router against an admin socket that misbehaves: typed errors, no traffic change.

A real Unix socket server stands in for HAProxy's runtime API and answers each command with a
fault: silence (hang), a reset, an empty answer, garbage, a refusal, a socket nobody may open.
Whatever it does, the router raises one of :mod:`rollout.errors`' types (whose class says
whether a retry helps), within a bounded time, and a ``set_weights`` whose reads fail never
sends a single ``set`` command.
"""

from __future__ import annotations

import os
import socketserver
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import serving

from rollout.errors import BadInputError, RolloutError, TemporaryError
from rollout.machine import Weights
from rollout.routers.haproxy import HaproxyRouter


class _Socket(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path) -> None:
        self.fault = "garbage"
        self.commands: list[str] = []
        super().__init__(str(path), _Handler)


class _Handler(socketserver.StreamRequestHandler):
    server: _Socket

    def handle(self) -> None:
        command = self.rfile.readline().decode().strip()
        self.server.commands.append(command)
        fault = self.server.fault
        if fault == "hang":
            time.sleep(7)
        elif fault == "reset":
            self.connection.shutdown(2)
        elif fault == "garbage":
            self.wfile.write(b"\xff\xfe<html>503 Service Unavailable</html>\n")
        elif fault == "unknown":
            self.wfile.write(b"No such server.\n")
        elif fault == "refuse-set":
            answer = b"100 (initial 100)\n" if command.startswith("get") else b"Permission denied\n"
            self.wfile.write(answer)


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[_Socket]:
    with serving(_Socket(tmp_path / "admin.sock")) as srv:
        yield srv


def _router(admin: _Socket, retries: int = 1) -> HaproxyRouter:
    return HaproxyRouter(admin.server_address, retries=retries,  # type: ignore[arg-type]
                         base_delay=0.01, sleep=lambda _s: None)


@pytest.mark.parametrize(("fault", "kind"), [
    ("garbage", BadInputError), ("unknown", BadInputError), ("reset", RolloutError),
    ("refuse-set", TemporaryError)])
def test_a_misbehaving_socket_is_a_typed_error_and_no_weight_changes(
        admin: _Socket, fault: str, kind: type[RolloutError]) -> None:
    admin.fault = fault
    with pytest.raises(kind) as e:
        _router(admin).set_weights(Weights(blue=50, green=50))
    assert str(admin.server_address) in str(e.value) or "sd/" in str(e.value)
    sets = [c for c in admin.commands if c.startswith("set ")]
    if fault != "refuse-set":  # reads failed: nothing may be sent
        assert sets == []
    else:  # the first set was refused (and retried): the second never sent
        assert sets and all(c == sets[0] for c in sets)


def test_a_silent_socket_is_a_temporary_error_within_the_timeout(admin: _Socket) -> None:
    admin.fault = "hang"
    t0 = time.monotonic()
    with pytest.raises(TemporaryError, match="timed out"):
        _router(admin, retries=0).get_weights()
    assert time.monotonic() - t0 < 6.5


def test_a_socket_nobody_may_open_is_a_typed_error(admin: _Socket) -> None:
    if os.geteuid() == 0:
        pytest.skip("root opens any socket")
    os.chmod(admin.server_address, 0)
    with pytest.raises(RolloutError):
        _router(admin, retries=0).get_weights()
