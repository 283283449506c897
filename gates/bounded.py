"""Bounded HTTP reads: one deadline for a whole exchange and a cap on the body.

Why: httpx's timeouts bound each socket operation, not the exchange. A server that trickles a
byte every few seconds keeps every read inside its timeout and holds the caller forever (a
green ``/capabilities`` doing so held ``rollout promote`` in Admitting indefinitely), and
``response.read()`` buffers whatever length the server sends (an endless body reaches GBs in
seconds; the in-cluster Job has 512 Mi). Every read of another service's answer goes through
this module instead:

* :func:`read_bounded` (sync) and :func:`aread_bounded` (async) send a request, stream the
  body (``iter_bytes`` / ``aiter_bytes``), stop as soon as it exceeds ``max_bytes``
  (:class:`ResponseTooLargeError`, before reading anything when ``Content-Length`` already
  says so) and end the exchange at a monotonic deadline ``deadline_s`` after the call, counted
  across connect, request, headers and the whole body (:class:`DeadlineExceededError`).
* The sync path needs no thread: every socket operation's timeout is the time left to the
  deadline (httpcore's ``trace`` extension clamps the connect timeout and gives each new
  connection's stream reads and writes bounded by the exchange's deadline; a connection made
  elsewhere is bounded from its headers on), and the deadline is checked between chunks and
  at each phase. A trickling server is cut off at the deadline, not one read later.
* The async path runs the exchange inside ``asyncio.timeout(deadline_s)``; without
  ``deadline_s`` the caller's own ``asyncio.timeout`` bounds it (the canary's per-request one).

The cap applies to the decoded body (what would be held in memory). Both errors subclass
:class:`BoundedReadError`; other httpx errors (refused connection, protocol errors) propagate
as they are. The module never imports :mod:`rollout`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import httpx

from gates.wire import WIRE_TIMING, WireTiming

__all__ = [
    "CANARY_MAX_BYTES",
    "CAPABILITIES_MAX_BYTES",
    "EXCHANGE_SECONDS",
    "PROMETHEUS_MAX_BYTES",
    "BoundedReadError",
    "BoundedResponse",
    "DeadlineExceededError",
    "ResponseTooLargeError",
    "aread_bounded",
    "read_bounded",
]

MiB: Final = 1024 * 1024
#: Defaults (the policy's ``spec.limits`` overrides them): one exchange with a probe, an
#: admission read or a Prometheus query ...
EXCHANGE_SECONDS: Final = 30.0
#: ... and body caps: ``/capabilities`` (and ``/readyz``, ``/healthz``) bodies are a few KiB,
#: a canary answer a batch of base64 PNGs (a few MB at 1024 px), a Prometheus answer a vector.
CAPABILITIES_MAX_BYTES: Final = 1 * MiB
CANARY_MAX_BYTES: Final = 64 * MiB
PROMETHEUS_MAX_BYTES: Final = 16 * MiB

#: The deadline of the exchange this thread (or task) is reading, for the bounded streams.
_DEADLINE: ContextVar[float | None] = ContextVar("gates_bounded_deadline", default=None)
#: httpcore trace events (less the logger prefix: ``connection.``, ``http11.``, ``proxy.``,
#: ...) that start network I/O: refused once the deadline has passed ...
_PHASES: Final = frozenset(
    f"{name}.started" for name in (
        "connect_tcp", "connect_unix_socket", "start_tls", "send_request_headers",
        "send_request_body", "receive_response_headers", "receive_response_body"))
#: ... and those that hand over a new network stream (``return_value``).
_NEW_STREAM: Final = frozenset(
    f"{name}.complete" for name in ("connect_tcp", "connect_unix_socket", "start_tls"))
_MIN_TIMEOUT_S: Final = 0.001
_BOUND_MARK: Final = "_gates_bounded_deadline"


class BoundedReadError(Exception):
    """An exchange broke one of its bounds; ``str(e)`` names the URL and the bound.

    Attributes:
        url: the request's URL.
        status_code: the answer's status when headers had arrived, else ``None``.
    """

    def __init__(self, message: str, *, url: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status_code = status_code


class DeadlineExceededError(BoundedReadError):
    """No complete answer (connect, headers and whole body) within the deadline."""


class ResponseTooLargeError(BoundedReadError):
    """The body is longer than the cap; reading stopped there."""


@dataclass(frozen=True)
class BoundedResponse:
    """A complete answer read within its bounds."""

    url: str
    status_code: int
    headers: httpx.Headers
    content: bytes
    #: Socket-side times of the exchange when the client's transport keeps them
    #: (:class:`gates.wire.TimedTransport`).
    wire: WireTiming | None = None

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced): for messages."""
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises:
            ValueError: not JSON (``json.JSONDecodeError`` or a ``UnicodeDecodeError``).
        """
        return json.loads(self.content)


def read_bounded(client: httpx.Client, request: httpx.Request, *, deadline_s: float,
                 max_bytes: int) -> BoundedResponse:
    """Send ``request`` (``client.build_request(...)``) and read the whole answer, bounded.

    The request's timeouts are replaced by the deadline (see the module docstring).

    Raises:
        DeadlineExceededError: no complete answer within ``deadline_s`` seconds.
        ResponseTooLargeError: the body exceeds ``max_bytes`` (decoded).
        httpx.HTTPError: any other failure of the exchange (connection refused, ...).
        ValueError: ``deadline_s`` or ``max_bytes`` is not positive.
    """
    _check_bounds(deadline_s, max_bytes)
    url = str(request.url)
    deadline = time.monotonic() + deadline_s

    def expired(status: int | None = None) -> DeadlineExceededError:
        return _deadline_error(url, deadline_s, status)

    request.extensions["timeout"] = httpx.Timeout(deadline_s).as_dict()
    request.extensions["trace"] = _tracer(deadline, expired, request.extensions.get("trace"))
    token = _DEADLINE.set(deadline)
    status: int | None = None
    try:
        response = client.send(request, stream=True)
        try:
            status = response.status_code
            _bound_stream(response.extensions.get("network_stream"))
            _check_declared_length(response, max_bytes, url)
            body = bytearray()
            for chunk in response.iter_bytes():
                _append(body, chunk, max_bytes, url, status)
                if time.monotonic() >= deadline:
                    raise expired(status)
        finally:
            response.close()
    except httpx.TimeoutException as e:  # every timeout of the exchange is the time left
        raise expired(status) from e
    finally:
        _DEADLINE.reset(token)
    return BoundedResponse(url, status, response.headers, bytes(body))


async def aread_bounded(client: httpx.AsyncClient, request: httpx.Request, *, max_bytes: int,
                        deadline_s: float | None = None) -> BoundedResponse:
    """Send ``request`` and read the whole answer, streamed, within ``max_bytes``.

    With ``deadline_s`` the whole exchange runs inside ``asyncio.timeout(deadline_s)``;
    without it the caller bounds the time (its own ``asyncio.timeout`` raises ``TimeoutError``
    as usual). Cancellation propagates and closes the connection.

    Raises:
        DeadlineExceededError: ``deadline_s`` was given and passed before the answer was read.
        ResponseTooLargeError: the body exceeds ``max_bytes`` (decoded).
        httpx.HTTPError: any other failure of the exchange.
        ValueError: ``deadline_s`` or ``max_bytes`` is not positive.
    """
    _check_bounds(math.inf if deadline_s is None else deadline_s, max_bytes)
    status: list[int] = []
    if deadline_s is None:
        return await _aread(client, request, max_bytes, status)
    try:
        async with asyncio.timeout(deadline_s):
            return await _aread(client, request, max_bytes, status)
    except TimeoutError as e:  # ours: an enclosing timeout arrives here as a cancellation
        raise _deadline_error(str(request.url), deadline_s, status[0] if status else None) \
            from e


async def _aread(client: httpx.AsyncClient, request: httpx.Request, max_bytes: int,
                 status: list[int]) -> BoundedResponse:
    url = str(request.url)
    response = await client.send(request, stream=True)
    status.append(response.status_code)
    try:
        _check_declared_length(response, max_bytes, url)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            _append(body, chunk, max_bytes, url, response.status_code)
    finally:
        await response.aclose()
    wire = response.extensions.get(WIRE_TIMING)
    return BoundedResponse(url, response.status_code, response.headers, bytes(body),
                           wire if isinstance(wire, WireTiming) else None)


def _check_bounds(deadline_s: float, max_bytes: int) -> None:
    if not deadline_s > 0:
        raise ValueError(f"deadline_s must be > 0, got {deadline_s!r}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes!r}")


def _size(n: int) -> str:
    for unit, factor in (("GiB", MiB * 1024), ("MiB", MiB), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} bytes"


def _deadline_error(url: str, deadline_s: float, status: int | None) -> DeadlineExceededError:
    where = "before its headers" if status is None else f"(HTTP {status}) before its body ended"
    return DeadlineExceededError(
        f"{url}: no complete answer within the {deadline_s:g} s deadline of the exchange "
        f"(connect, headers and body): cut off {where}", url=url, status_code=status)


def _too_large(url: str, max_bytes: int, status: int, what: str) -> ResponseTooLargeError:
    return ResponseTooLargeError(
        f"{url}: response body {what} the {_size(max_bytes)} cap (HTTP {status}); "
        "stopped reading", url=url, status_code=status)


def _check_declared_length(response: httpx.Response, max_bytes: int, url: str) -> None:
    """Refuse before reading when an unencoded body's ``Content-Length`` exceeds the cap."""
    declared = response.headers.get("content-length")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if declared is None or encoding != "identity":
        return
    try:
        length = int(declared)
    except ValueError:
        return  # h11 refuses such a header anyway
    if length > max_bytes:
        raise _too_large(url, max_bytes, response.status_code,
                         f"declared at {length} bytes exceeds")


def _append(body: bytearray, chunk: bytes, max_bytes: int, url: str, status: int) -> None:
    if len(body) + len(chunk) > max_bytes:
        raise _too_large(url, max_bytes, status, "exceeds")
    body += chunk


def _tracer(deadline: float, expired: Callable[[], DeadlineExceededError],
            inner: Any) -> Callable[[str, dict[str, Any]], None]:
    """httpcore's ``trace`` callback for one exchange: refuse phases past the deadline, clamp
    the connect timeout to the time left, bound every new connection's stream."""
    def trace(event: str, info: dict[str, Any]) -> None:
        phase = event.partition(".")[2]
        if phase in _PHASES:
            left = deadline - time.monotonic()
            if left <= 0:
                raise expired()
            if "timeout" in info:  # the connect/TLS call's own keyword arguments
                timeout = info["timeout"]
                info["timeout"] = left if timeout is None else min(timeout, left)
        elif phase in _NEW_STREAM:
            _bound_stream(info.get("return_value"))
        if inner is not None:
            inner(event, info)

    return trace


def _left(timeout: float | None) -> float | None:
    """``timeout`` cut to the time left before the current exchange's deadline, if any."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = max(deadline - time.monotonic(), _MIN_TIMEOUT_S)
    return left if timeout is None else min(timeout, left)


def _bound_stream(stream: Any) -> None:
    """Make each ``read``/``write`` of an httpcore network stream wait at most until the
    deadline of the exchange using it (none: unchanged); idempotent, a no-op on streams that
    cannot be wrapped (mock transports have none)."""
    if stream is None or getattr(stream, _BOUND_MARK, False):
        return
    read, write = getattr(stream, "read", None), getattr(stream, "write", None)
    if not (callable(read) and callable(write)):
        return

    def bounded_read(max_bytes: int, timeout: float | None = None) -> bytes:
        data: bytes = read(max_bytes, _left(timeout))
        return data

    def bounded_write(buffer: bytes, timeout: float | None = None) -> None:
        write(buffer, _left(timeout))

    try:
        stream.read = bounded_read
        stream.write = bounded_write
        setattr(stream, _BOUND_MARK, True)
    except AttributeError:  # __slots__: the checks between chunks still apply
        return
