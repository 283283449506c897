"""A loopback image server with a known, fixed service time: the canary's measuring stick.

Why: to know how much latency the canary client itself adds, it must talk to a server whose
answer time is known exactly; and the CLI and runner tests need a real HTTP server that is
fast, deterministic and can misbehave on demand. This is that server: raw asyncio HTTP/1.1 with
keep-alive, the two image routes the adapters speak (``POST /v1/images/generations`` and
``POST /sdapi/v1/txt2img``), one small PNG per seed (so the output check has real images), and

* ``service_s``: every answer is sent this long after its request was read;
* ``jitter_s``: plus an exponentially distributed delay of this mean (seeded), for tests that
  need two identical servers to be *exchangeable*: with a fixed service time their answers tie,
  and ties are broken by the machinery (thread and process scheduling), not by chance;
* ``status``: answer every request with this HTTP status (500 for a failing green);
* ``stall``: never answer (a hung green).

Each answer carries ``Server-Timing: svc;dur=<ms>``, the server's own measure of the time
between reading the request and writing the answer, so a client can tell its own overhead from
the server's timer overshoot. Run it as ``python -m gates.canary.loopback --port 18080
--service-ms 50`` or in a thread with :class:`LoopbackServer`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["LoopbackBehaviour", "LoopbackServer", "loopback_process", "main", "solid_png"]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
            503: "Service Unavailable"}


@dataclass(frozen=True)
class LoopbackBehaviour:
    """How the server answers (see the module docstring)."""

    service_s: float = 0.05
    jitter_s: float = 0.0
    seed: int | None = None
    status: int = 200
    stall: bool = False
    side: int = 64


@lru_cache(maxsize=1024)
def solid_png(side: int, value: int) -> bytes:
    """A ``side`` x ``side`` 8-bit grey PNG of one value (unfiltered rows)."""
    raw = (b"\x00" + bytes([value % 256]) * side) * side

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0,
                                                               0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


class _Protocol(asyncio.Protocol):
    def __init__(self, behaviour: LoopbackBehaviour, open_: set[asyncio.Transport],
                 rng: random.Random) -> None:
        self.b = behaviour
        self.rng = rng
        self.buf = b""
        self.open = open_
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.open.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        t_read = time.perf_counter()
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1").split("\r\n")
            length = 0
            for h in head[1:]:
                name, _, value = h.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4:head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length:]
            parts = head[0].split(" ")
            self._schedule(parts[1] if len(parts) > 1 else "/", body, t_read)

    def _schedule(self, path: str, body: bytes, t_read: float) -> None:
        if self.b.stall:
            return
        loop = asyncio.get_running_loop()
        delay = self.b.service_s + (self.rng.expovariate(1 / self.b.jitter_s)
                                    if self.b.jitter_s > 0 else 0.0)
        loop.call_at(loop.time() + delay, self._answer, path, body, t_read)

    def _answer(self, path: str, body: bytes, t_read: float) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        status, doc = self._document(path, body)
        payload = json.dumps(doc).encode()
        svc_ms = (time.perf_counter() - t_read) * 1e3
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                f"Server-Timing: svc;dur={svc_ms:.4f}\r\n\r\n")
        self.transport.write(head.encode() + payload)

    def _document(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if self.b.status != 200:
            return self.b.status, {"error": {"message": "injected by the loopback server"}}
        try:
            req = json.loads(body)
            seed = int(req.get("seed", 0))
        except (ValueError, TypeError, AttributeError):
            return 400, {"error": {"message": "body must be a JSON object"}}
        image = base64.b64encode(solid_png(self.b.side, seed)).decode()
        if path == "/v1/images/generations":
            return 200, {"created": int(time.time()), "data": [{"b64_json": image}]}
        if path == "/sdapi/v1/txt2img":
            return 200, {"images": [image], "parameters": {}, "info": "{}"}
        return 404, {"error": {"message": f"no route {path}"}}


class LoopbackServer:
    """The server on ``127.0.0.1`` in a background thread; use as a context manager.

    ``url`` is valid once entered; the port is chosen by the OS unless given.
    """

    def __init__(self, behaviour: LoopbackBehaviour | None = None, port: int = 0) -> None:
        self.behaviour = behaviour if behaviour is not None else LoopbackBehaviour()
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.Transport] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            _serve(self.behaviour, self.port, self._open), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        server = self._server
        if server is not None:
            async def close() -> None:
                server.close()
                for t in list(self._open):  # stalled keep-alive connections included
                    t.close()
                await server.wait_closed()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@contextlib.contextmanager
def loopback_process(service_ms: float, jitter_ms: float = 0.0) -> Iterator[str]:
    """The server in a process of its own (``python -m gates.canary.loopback``); its URL.

    Why a process: benchmarks and timing tests load the calling process's CPU on purpose, and a
    server in a thread of it would answer late by the same amount (the GIL), hiding the very
    client overhead they measure.
    """
    proc = subprocess.Popen([sys.executable, "-m", "gates.canary.loopback", "--service-ms",
                             str(service_ms), "--jitter-ms", str(jitter_ms)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(10)


async def _serve(behaviour: LoopbackBehaviour, port: int,
                 open_: set[asyncio.Transport]) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    rng = random.Random(behaviour.seed)
    return await loop.create_server(lambda: _Protocol(behaviour, open_, rng), "127.0.0.1", port)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve in the foreground until interrupted (prints the URL once listening)."""
    p = argparse.ArgumentParser(prog="python -m gates.canary.loopback")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--service-ms", type=float, default=50.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--status", type=int, default=200)
    p.add_argument("--stall", action="store_true")
    a = p.parse_args(argv)
    behaviour = LoopbackBehaviour(service_s=a.service_ms / 1000, jitter_s=a.jitter_ms / 1000,
                                  status=a.status, stall=a.stall)

    async def run() -> None:
        server = await _serve(behaviour, a.port, set())
        print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
