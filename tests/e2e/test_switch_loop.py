"""Make-before-break through a real HAProxy: switching under load never answers 503.

Sixteen client threads loop GET requests through HAProxy while the main thread flips the split
300 times between 100/0 and 0/100 with ``HaproxyRouter.set_weights``. HAProxy's runtime API
changes one server per command, so the order of the two commands is visible to users: lowering
first passes through 0/0 and HAProxy answers "503 No server is available" to whoever arrives in
between (hundreds per run with the old order); raising first passes through 100/100, where both
colours serve. The backends are two stdlib HTTP servers in threads, not SD servers, so the
test measures the router and not the model.

The second test SIGKILLs a process exactly between the two commands (``router:between``) and
checks that the split it leaves behind serves from both colours, never from neither.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from fakes import serve_text

from rollout.crashpoints import CRASH_ENV
from rollout.local.haproxy import start_haproxy
from rollout.local.processes import ManagedProcess, free_port
from rollout.machine import Weights
from rollout.routers.haproxy import HaproxyRouter

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 16
SWITCHES = 300
PAUSE = 0.01  # between switches: lets every client land requests on each side of each switch


def _color_server(color: str) -> ThreadingHTTPServer:
    return serve_text(lambda: color, "text/plain")


def _ensure_haproxy() -> None:
    """CI installs HAProxy (``make system-deps``); a bare dev machine gets it from apt here."""
    if shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/bin:/sbin"):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail("haproxy is not installed: run 'make system-deps'")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", "haproxy"], check=True, env=env,
                   timeout=600)


@dataclass
class Lb:
    router: HaproxyRouter
    port: int
    proc: ManagedProcess


@pytest.fixture
def lb(tmp_path: Path) -> Iterator[Lb]:
    _ensure_haproxy()
    blue, green = _color_server("blue"), _color_server("green")
    port = free_port()
    proc, sock = start_haproxy(tmp_path / "haproxy", frontend_port=port,
                               blue=f"127.0.0.1:{blue.server_port}",
                               green=f"127.0.0.1:{green.server_port}")
    try:
        yield Lb(HaproxyRouter(sock), port, proc)
    finally:
        proc.stop()
        blue.shutdown()
        green.shutdown()


def _get(port: int) -> str:
    """One request on a fresh connection: ``"200 blue"``, ``"503 ..."`` or the error's type."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        return f"{resp.status} {body if resp.status == 200 else ''}".strip()
    except (OSError, http.client.HTTPException) as e:
        return f"error {type(e).__name__}"
    finally:
        conn.close()


def test_switch_loop_never_answers_503(lb: Lb) -> None:
    lb.router.set_weights(Weights(blue=100, green=0))
    stop = threading.Event()
    counts: list[Counter[str]] = [Counter() for _ in range(CLIENTS)]

    def client(seen: Counter[str]) -> None:
        while not stop.is_set():
            seen[_get(lb.port)] += 1

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in counts]
    for t in threads:
        t.start()
    started = time.monotonic()
    try:
        for i in range(SWITCHES):
            green = 100 if i % 2 == 0 else 0
            lb.router.set_weights(Weights(blue=100 - green, green=green))
            time.sleep(PAUSE)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    elapsed = time.monotonic() - started
    total = sum(counts, Counter())
    requests = sum(total.values())
    print(f"{requests} requests in {elapsed:.1f} s over {SWITCHES} switches: {dict(total)}")
    assert lb.proc.proc.poll() is None, "haproxy died"
    assert set(total) <= {"200 blue", "200 green"}, (
        f"{requests - total['200 blue'] - total['200 green']} of {requests} requests failed "
        f"during {SWITCHES} switches: {dict(total)}")
    assert requests > 1000, dict(total)
    assert total["200 blue"] > 0 and total["200 green"] > 0, dict(total)
    assert lb.router.get_weights() == Weights(blue=100, green=0)  # an even number of switches


_SET = ("import sys; from rollout.machine import Weights; "
        "from rollout.routers.haproxy import HaproxyRouter; "
        "HaproxyRouter(sys.argv[1]).set_weights("
        "Weights(blue=int(sys.argv[2]), green=int(sys.argv[3])))")


def _set_in_subprocess(router: HaproxyRouter, target: Weights,
                       crash_at: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at is not None:
        env[CRASH_ENV] = crash_at
    return subprocess.run(
        [sys.executable, "-c", _SET, str(router.socket_path), str(target.blue),
         str(target.green)], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
        check=False)


@pytest.mark.parametrize(("start", "target", "left"), [
    (Weights(blue=100, green=0), Weights(blue=0, green=100), Weights(blue=100, green=100)),
    (Weights(blue=0, green=100), Weights(blue=100, green=0), Weights(blue=100, green=100)),
    (Weights(blue=90, green=10), Weights(blue=50, green=50), Weights(blue=90, green=50)),
], ids=["to-green", "to-blue", "90/10-to-50/50"])
def test_kill_between_commands_leaves_both_serving(lb: Lb, start: Weights, target: Weights,
                                                   left: Weights) -> None:
    lb.router.set_weights(start)
    killed = _set_in_subprocess(lb.router, target, "router:between")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    after = lb.router.get_weights()
    assert after == left
    assert after.blue > 0 and after.green > 0  # both serving, never neither
    served = Counter(_get(lb.port) for _ in range(20))
    assert set(served) == {"200 blue", "200 green"}, dict(served)
    # The next controller repairs the split by applying the same step again.
    finished = _set_in_subprocess(lb.router, target, None)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert lb.router.get_weights() == target
