"""An httpx transport that times each exchange at the socket: the canary's clock.

Why: the canary measured latency where its coroutine resumed after the last body byte. On one
event loop that moment waits for every coroutine that became ready before it: with 64
requests in flight whose answers land together, the last answer's clock ran on while the
client parsed, hashed and judged the 63 before it (``bench/results/canary_overhead.md``: 291 ms
added at P99 against hey's 17 ms). Stamping in the read callback is not enough either: the
event loop polls sockets only between iterations, and one iteration runs every coroutine that
was ready at its start, so an answer landing during a busy iteration is read tens of
milliseconds late. The kernel knows better: with ``SO_TIMESTAMPNS`` each ``recvmsg`` carries
the time the kernel received the data it returns (Linux; plain TCP). So this transport reads
plain-HTTP sockets itself (``add_reader`` + ``recvmsg``), feeds h11 in the read callback, and
keeps per exchange:

* ``start``: when httpx handed the request to the transport, after its own request building,
  before connecting (a new connection's connect time is part of what the user waits for);
* ``sent``: when the request was handed to the kernel;
* ``complete``: when the kernel received the answer's last byte, in ``perf_counter`` time
  (the read callback's clock minus how long ago the kernel stamped the data). Over TLS, or
  where the kernel gives no stamp, the read callback's own time.

Everything else stays httpx's: the client API, content decoding, the caller's timeouts and
bounded reads (:mod:`gates.bounded`), the exception types the canary classifies. Reading is
flow-controlled: a protocol holding more than ``max_buffer`` unread body bytes pauses the
socket, so a huge answer waits in the kernel, not in memory, until the reader's cap stops it.

Scope, deliberately narrow: HTTP/1.1 over TCP or TLS, keep-alive reuse per (scheme, host,
port), no proxies (``HTTP_PROXY`` is not read: the canary talks to its services directly, as
users' traffic reaches them), no HTTP/2. ``WireTiming`` rides in the response's
``extensions`` under :data:`WIRE_TIMING`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass

import h11
import httpx

__all__ = ["WIRE_TIMING", "TimedTransport", "WireTiming"]

#: The key of a response's :class:`WireTiming` in ``httpx.Response.extensions``.
WIRE_TIMING = "rollout_gates.wire_timing"
_MAX_BUFFER = 256 * 1024
_READ = 256 * 1024
# Linux's SO_TIMESTAMPNS (35; Python names it on few builds) and its control message: two
# native longs, seconds and nanoseconds of CLOCK_REALTIME.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform == "linux" else None)
_TIMESPEC = struct.Struct("@ll")


@dataclass
class WireTiming:
    """``perf_counter`` times of one exchange at the socket (see the module docstring)."""

    start: float
    sent: float | None = None
    complete: float | None = None  # set once the answer's last byte was parsed
    kernel: bool = False  # complete came from the kernel's receive stamp


_Event = h11.Response | h11.Data | h11.EndOfMessage


class _Wire:
    """One HTTP/1.1 connection: h11 parses what arrives in the read callback, the reader takes
    parsed events. Plain TCP is read here with ``recvmsg`` (kernel stamps); TLS through an
    asyncio protocol (:class:`_TlsLink`)."""

    def __init__(self, max_buffer: int) -> None:
        self.h11 = h11.Connection(h11.CLIENT)
        self.loop = asyncio.get_running_loop()
        self.sock: socket.socket | None = None  # plain TCP
        self.tls: asyncio.Transport | None = None  # TLS
        self.events: deque[_Event] = deque()
        self.max_buffer = max_buffer
        self.buffered = 0  # body bytes parsed, not yet taken by the reader
        self.paused = False
        self.complete_at: float | None = None
        self.kernel_stamp = False
        self.error: BaseException | None = None
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None

    # -- plain TCP: the event loop calls _readable ----------------------------------------

    def attach(self, sock: socket.socket) -> None:
        self.sock = sock
        if _SO_TIMESTAMPNS is not None:
            with suppress(OSError):  # no kernel stamps here: the callback's clock
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self.sock is not None
        while not self.closed and not self.paused:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(_READ, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # reset, ...
                self.error = e
                self.close()
                break
            now, real_ns = time.perf_counter(), time.time_ns()
            stamp, kernel = now, False
            for level, kind, raw in ancillary:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and \
                        len(raw) >= _TIMESPEC.size:
                    sec, ns = _TIMESPEC.unpack_from(raw)
                    ago = real_ns - (sec * 1_000_000_000 + ns)
                    stamp, kernel = now - max(ago, 0) / 1e9, True
            self.feed(data, stamp, kernel)
            if not data:
                self.close()
                break
        self._wake()

    # -- both: what arrived ---------------------------------------------------------------

    def feed(self, data: bytes, stamp: float, kernel: bool) -> None:
        """Parse ``data`` (``b""``: the peer closed) received at ``stamp``."""
        try:
            self.h11.receive_data(data)
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED or \
                        isinstance(event, h11.ConnectionClosed):  # repeated forever after EOF
                    break
                if isinstance(event, h11.EndOfMessage):
                    self.complete_at, self.kernel_stamp = stamp, kernel
                elif isinstance(event, h11.Data):
                    self.buffered += len(event.data)
                elif not isinstance(event, h11.Response):
                    continue  # 1xx answers
                self.events.append(event)
        except h11.RemoteProtocolError as e:
            self.error = e
            self.close()
        if self.buffered > self.max_buffer and not self.paused:
            self.pause(True)
        self._wake()

    def lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()

    def pause(self, paused: bool) -> None:
        """Stop (or restart) reading: unread bytes wait in the kernel."""
        self.paused = paused
        if self.sock is not None and not self.closed:
            if paused:
                self.loop.remove_reader(self.sock.fileno())
            else:
                self.loop.add_reader(self.sock.fileno(), self._readable)
        elif self.tls is not None:
            if paused:
                self.tls.pause_reading()
            else:
                self.tls.resume_reading()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- the reader's side -----------------------------------------------------------------

    def usable(self) -> bool:
        """Open and between messages: safe to send the next request on."""
        return (not self.closed and self.error is None and self.h11.our_state is h11.IDLE
                and self.h11.their_state is h11.IDLE and not self.events
                and not (self.tls is not None and self.tls.is_closing()))

    async def send(self, request: httpx.Request) -> float:
        """Write ``request``; the ``perf_counter`` time it was handed to the kernel."""
        body = await request.aread()
        out = self.h11.send(h11.Request(method=request.method, target=request.url.raw_path,
                                        headers=list(request.headers.raw))) or b""
        if body:
            out += self.h11.send(h11.Data(data=body)) or b""
        out += self.h11.send(h11.EndOfMessage()) or b""
        if self.closed:
            raise httpx.RemoteProtocolError("connection closed before the request was sent",
                                            request=request)
        sent = time.perf_counter()  # the answer can arrive before a write call returns
        if self.sock is not None:
            try:
                await self.loop.sock_sendall(self.sock, out)
            except OSError as e:
                raise httpx.WriteError(f"{type(e).__name__}: {e}", request=request) from e
        elif self.tls is not None:
            self.tls.write(out)
        return sent

    async def next_event(self, request: httpx.Request) -> _Event:
        """The next parsed event; what went wrong on the wire as an httpx error."""
        while not self.events:
            if self.error is not None:
                raise _httpx_error(self.error, request)
            if self.closed:
                raise httpx.RemoteProtocolError("server disconnected before the answer ended",
                                                request=request)
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        event = self.events.popleft()
        if isinstance(event, h11.Data):
            self.buffered -= len(event.data)
            if self.paused and self.buffered <= self.max_buffer // 2 and not self.closed:
                self.pause(False)
                if self.sock is not None:
                    self._readable()  # what waited in the kernel meanwhile
        return event

    def finish(self) -> bool:
        """After a whole answer: ready the connection for the next one; False if it cannot be
        reused (the server asked to close, or something is left over)."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return self.usable()
        return False

    def close(self) -> None:
        """Drop the connection (no half-read answer may be reused)."""
        if self.sock is not None and self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        if self.tls is not None:
            self.tls.abort()
        self.closed = True


class _TlsLink(asyncio.Protocol):
    """TLS through asyncio's SSL transport: stamps are the read callback's clock."""

    def __init__(self, wire: _Wire) -> None:
        self.wire = wire

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.wire.tls = transport

    def data_received(self, data: bytes) -> None:
        self.wire.feed(data, time.perf_counter(), False)

    def eof_received(self) -> bool:
        self.wire.feed(b"", time.perf_counter(), False)  # ends a body delimited by the close
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.wire.lost(exc)


def _httpx_error(error: BaseException, request: httpx.Request) -> httpx.TransportError:
    if isinstance(error, h11.RemoteProtocolError):
        return httpx.RemoteProtocolError(f"malformed answer: {error}", request=request)
    return httpx.ReadError(f"{type(error).__name__}: {error}", request=request)


class _Body(httpx.AsyncByteStream):
    """The answer's body as the reader takes it; the connection goes back idle at the end."""

    def __init__(self, transport: TimedTransport, key: tuple[str, str, int], wire: _Wire,
                 request: httpx.Request, timing: WireTiming) -> None:
        self.transport, self.key, self.wire = transport, key, wire
        self.request, self.timing = request, timing
        self.done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self.done:
            event = await self.wire.next_event(self.request)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.done = True
                self.timing.complete = self.wire.complete_at
                self.timing.kernel = self.wire.kernel_stamp

    async def aclose(self) -> None:
        if self.done and self.wire.finish():
            self.transport.idle.setdefault(self.key, []).append(self.wire)
        else:  # stopped early (a cap, a cancel): the rest of the answer must not be reused
            self.wire.close()


class TimedTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with socket-side timing (module docstring); one per canary client.

    Args:
        ssl_context: for ``https`` URLs (``None``: the system's default verification).
        max_buffer: unread body bytes held per connection before the socket is paused.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None,
                 max_buffer: int = _MAX_BUFFER) -> None:
        self.ssl_context = ssl_context
        self.max_buffer = max_buffer
        self.idle: dict[tuple[str, str, int], list[_Wire]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"{url.scheme!r} URLs are not supported",
                                            request=request)
        timing = WireTiming(start=time.perf_counter())
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        wire = self._idle(key) or await self._connect(key, request)
        try:
            timing.sent = await wire.send(request)
            head = await wire.next_event(request)
        except BaseException:
            wire.close()
            raise
        assert isinstance(head, h11.Response)  # h11 yields the head before any body event
        return httpx.Response(
            head.status_code, headers=head.headers.raw_items(),
            stream=_Body(self, key, wire, request, timing),
            extensions={"http_version": b"HTTP/" + head.http_version,
                        "reason_phrase": head.reason, WIRE_TIMING: timing})

    def _idle(self, key: tuple[str, str, int]) -> _Wire | None:
        wires = self.idle.get(key, [])
        while wires:
            wire = wires.pop()
            if wire.usable():
                return wire
            wire.close()
        return None

    async def _connect(self, key: tuple[str, str, int], request: httpx.Request) -> _Wire:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        wire = _Wire(self.max_buffer)
        try:
            if scheme == "https":
                await loop.create_connection(
                    lambda: _TlsLink(wire), host, port,
                    ssl=self.ssl_context or ssl.create_default_context(), server_hostname=host)
            else:
                wire.attach(await _tcp(loop, host, port))
        except OSError as e:  # refused, unreachable, DNS, TLS handshake
            raise httpx.ConnectError(f"{type(e).__name__}: {e}", request=request) from e
        return wire

    async def aclose(self) -> None:
        for wires in self.idle.values():
            for wire in wires:
                wire.close()
        self.idle.clear()


async def _tcp(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket (each address in turn, as asyncio does)."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
            return sock
        except OSError as e:
            sock.close()
            error = e
        except BaseException:
            sock.close()
            raise
    raise error
