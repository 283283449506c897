"""The canary's transport (:mod:`gates.wire`): socket-side timing that other answers' CPU work
cannot inflate, and HTTP/1.1 behaviour the canary relies on (keep-alive, close, chunked, gzip,
flow control, TLS, and every failure as an httpx error), against real sockets."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import numpy as np
import pytest

from gates.bounded import ResponseTooLargeError, aread_bounded
from gates.canary.loopback import loopback_process
from gates.wire import WIRE_TIMING, TimedTransport, WireTiming

Reply = Callable[[socket.socket, bytes], None]


@contextmanager
def raw_server(reply: Reply, *,
               tls: ssl.SSLContext | None = None) -> Iterator[tuple[str, list[int]]]:
    """A threaded TCP server calling ``reply(conn, request_bytes)`` for each request read
    (requests end at the blank line; bodies are read by Content-Length); yields its URL and the
    list of connection numbers each request arrived on."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[int] = []
    stop = threading.Event()

    def handle(conn: socket.socket, number: int) -> None:
        with conn, suppress(OSError):  # a reply that closed or reset the connection
            buf = b""
            while not stop.is_set():
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                seen.append(number)
                reply(conn, head)

    def accept() -> None:
        number = 0
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if tls is not None:
                try:
                    conn = tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    conn.close()
                    continue
            number += 1
            threading.Thread(target=handle, args=(conn, number), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", seen
    finally:
        stop.set()
        listener.close()


def answer(body: bytes, *extra: str) -> Reply:
    def reply(conn: socket.socket, _: bytes) -> None:
        head = "\r\n".join(["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra])
        conn.sendall(head.encode() + b"\r\n\r\n" + body)
    return reply


async def fetch(url: str, *, n: int = 1,
                ssl_context: ssl.SSLContext | None = None) -> list[httpx.Response]:
    """``n`` sequential POSTs through one client with the timed transport, bodies read."""
    out = []
    transport = TimedTransport(ssl_context=ssl_context)
    async with httpx.AsyncClient(base_url=url, transport=transport) as client:
        for i in range(n):
            r = await client.post("/v1/images/generations", json={"i": i})
            await r.aread()
            out.append(r)
    return out


def test_stamps_are_ordered_and_keep_alive_reuses_one_connection() -> None:
    with raw_server(answer(b'{"ok": true}', "Content-Type: application/json")) as (url, seen):
        responses = asyncio.run(fetch(url, n=3))
    assert [r.json() for r in responses] == [{"ok": True}] * 3
    assert seen == [1, 1, 1]  # one connection for three requests
    for r in responses:
        t = r.extensions[WIRE_TIMING]
        assert isinstance(t, WireTiming)
        assert t.sent is not None and t.complete is not None
        assert t.start <= t.sent <= t.complete
        # Linux stamps plain TCP in the kernel: a silent fall back to the callback's clock
        # would bring back the very delay this transport exists to remove.
        assert t.kernel is (sys.platform == "linux")


def test_a_server_that_asks_to_close_gets_a_new_connection_next_time() -> None:
    with raw_server(answer(b"{}", "Connection: close")) as (url, seen):
        responses = asyncio.run(fetch(url, n=2))
    assert [r.status_code for r in responses] == [200, 200]
    assert seen == [1, 2]


def test_an_idle_connection_the_server_closed_is_never_reused() -> None:
    """What a keep-alive timeout does (uvicorn: 5 s idle): the close is noticed while idle,
    the next request opens a new connection, and the closed one costs no CPU."""
    def reply(conn: socket.socket, head: bytes) -> None:
        answer(b"{}")(conn, head)
        conn.shutdown(socket.SHUT_RDWR)

    async def two(url: str) -> tuple[list[int], float]:
        transport = TimedTransport()
        async with httpx.AsyncClient(base_url=url, transport=transport) as client:
            codes = [(await client.get("/")).status_code]
            cpu0 = time.process_time()
            await asyncio.sleep(0.3)  # the close arrives while the connection is idle
            idle_cpu = time.process_time() - cpu0
            codes.append((await client.get("/")).status_code)
        return codes, idle_cpu

    with raw_server(reply) as (url, seen):
        codes, idle_cpu = asyncio.run(two(url))
    assert codes == [200, 200] and seen == [1, 2]
    assert idle_cpu < 0.1, idle_cpu  # no busy loop on the closed socket


def test_chunked_and_gzip_answers_are_decoded_by_httpx_as_usual() -> None:
    payload = gzip.compress(b'{"images": ["x"]}')
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (payload[:7], payload[7:])) + \
        b"0\r\n\r\n"

    def reply(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Encoding: gzip\r\n\r\n" + chunks)

    with raw_server(reply) as (url, _):
        (r,) = asyncio.run(fetch(url))
    assert r.json() == {"images": ["x"]}
    assert r.extensions[WIRE_TIMING].complete is not None


@pytest.mark.parametrize(("reply", "error"), [
    (lambda c, _: c.sendall(b"NOT HTTP AT ALL\r\n\r\n"), httpx.RemoteProtocolError),
    (lambda c, _: (c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"),
                   c.shutdown(socket.SHUT_RDWR)), httpx.RemoteProtocolError),
    (lambda c, _: c.close(), httpx.RemoteProtocolError),
    (lambda c, _: (c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0"),
                   c.close()), httpx.TransportError),
], ids=["garbage", "cut-mid-body", "closed-before-answer", "reset"])
def test_every_broken_answer_is_an_httpx_transport_error(reply: Reply,
                                                         error: type[Exception]) -> None:
    with raw_server(reply) as (url, _), pytest.raises(error):
        asyncio.run(fetch(url))


def test_a_refused_port_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        asyncio.run(fetch(f"http://127.0.0.1:{port}"))


def test_a_huge_answer_waits_in_the_kernel_not_in_memory() -> None:
    """Flow control: with a 1 MiB cap, a 64 MiB answer is refused after about the cap plus
    the socket buffers, and the transport paused the socket instead of buffering the rest."""
    size = 64 * 2**20
    sent = [0]

    def reply(conn: socket.socket, _: bytes) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        block = b"x" * 65536
        conn.settimeout(5)
        try:
            while sent[0] < size:
                sent[0] += conn.send(block)
        except OSError:
            pass

    async def read(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, transport=TimedTransport(
                max_buffer=64 * 1024)) as client:
            await aread_bounded(client, client.build_request("GET", "/"), max_bytes=2**20)

    with raw_server(reply) as (url, _), pytest.raises(ResponseTooLargeError):
        asyncio.run(read(url))
    assert sent[0] < 24 * 2**20, sent[0]  # not 64 MiB: the rest stayed unread


def test_tls_with_verification_off_and_refused_with_it_on(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    off = ssl.create_default_context()
    off.check_hostname, off.verify_mode = False, ssl.CERT_NONE
    with raw_server(answer(b'{"tls": 1}'), tls=server_tls) as (url, _):
        (r,) = asyncio.run(fetch(url, ssl_context=off))
        assert r.json() == {"tls": 1}
        assert r.extensions[WIRE_TIMING].kernel is False  # TLS: the read callback's clock
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(fetch(url))  # the system's verification: self-signed is refused


def test_answers_landing_together_keep_their_own_time_while_the_client_is_busy() -> None:
    """32 requests in lock step, each answer followed by 4 ms of client CPU (what parsing,
    hashing and judging cost): timed where the coroutine resumes, the last answers wait for
    the others' CPU; timed at the socket, none does."""
    service_s, in_flight, burn_s = 0.1, 32, 0.004

    async def run(url: str) -> tuple[np.ndarray, np.ndarray]:
        socket_side, resumed = [], []
        clients = [httpx.AsyncClient(base_url=url, transport=TimedTransport())
                   for _ in range(in_flight)]

        async def one(client: httpx.AsyncClient) -> None:
            t0 = time.perf_counter()
            r = await client.post("/v1/images/generations", json={"seed": 1})
            await r.aread()
            resumed.append(time.perf_counter() - t0)
            t = r.extensions[WIRE_TIMING]
            socket_side.append(t.complete - t.start)
            end = time.perf_counter() + burn_s
            while time.perf_counter() < end:  # the client's own work on this answer
                pass

        for round_ in range(4):
            await asyncio.gather(*(one(c) for c in clients))
            if round_ == 0:  # connections opened: measure from here
                socket_side.clear()
                resumed.clear()
        for c in clients:
            await c.aclose()
        return np.array(socket_side) - service_s, np.array(resumed) - service_s

    with loopback_process(service_s * 1000) as url:
        socket_added, resumed_added = asyncio.run(run(url))
    # The coroutine-side clock of the last answer of a round includes ~31 x 4 ms of others' CPU.
    assert np.max(resumed_added) > 0.08, resumed_added
    assert np.percentile(socket_added, 99) < 0.5 * np.max(resumed_added), (
        np.percentile(socket_added, 99), np.max(resumed_added))
    assert np.median(socket_added) < 0.03, np.median(socket_added)
