"""One measured canary request: send it, time it, classify the outcome; and image decoding.

Bodies are read streamed, at most ``max_body_bytes`` of each (:mod:`gates.bounded`): a larger
answer is a ``bad_payload`` error, read no further, so an endless body cannot exhaust the
client's memory. ``timeout_s`` bounds the whole exchange (connect, headers and body), and
latency runs until the body's last byte: stamped at the socket when the client's transport is
:class:`gates.wire.TimedTransport` (the canary's), so parsing and judging other answers that
landed at the same moment never adds to this one's. Measured requests are never retried: a
failure is data, classified as one of :data:`~gates.canary.records.ERROR_KINDS`.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import httpx

from gates.bounded import BoundedReadError, BoundedResponse, aread_bounded
from gates.canary.adapters import ImageAPI
from gates.canary.adapters.base import BadPayloadError
from gates.canary.output_check import ImageFingerprint, digest, fingerprint
from gates.canary.prompts import Prompt
from gates.canary.records import ErrorKind, RequestRecord

__all__ = ["Recorder", "decoded", "images_of", "parse_server_timing", "send"]

# Slices with more image bytes than this are decoded in a worker thread, so PNG decoding (tens
# of ms at 512 px) does not delay the timestamps of other requests finishing meanwhile.
_INLINE_DECODE_BYTES = 256 * 1024
_DETAIL_CHARS = 300

#: Builds a request's record from when it started (``perf_counter`` time), its latency and
#: its outcome (``error``, ``status``, ``images``...).
Recorder = Callable[..., RequestRecord]


async def send(client: httpx.AsyncClient, api: ImageAPI, prompt: Prompt, seed: int, *,
               timeout_s: float, max_body_bytes: int, due: float | None, record: Recorder,
               on_cancel: Callable[[RequestRecord], None]) -> RequestRecord:
    """Send one request, time it, classify the outcome; never raises except on cancel.

    Latency runs from ``due`` (the open loop's arrival time) when given, else from the moment
    the request is sent. A cancelled request is handed to ``on_cancel`` before the
    cancellation propagates.
    """
    req = api.request(prompt, seed)
    built = client.build_request("POST", req.path, json=req.body)  # not part of the timing
    t0 = time.perf_counter()
    start = t0 if due is None else due
    try:
        try:
            async with asyncio.timeout(timeout_s):  # the whole exchange
                resp = await aread_bounded(client, built, max_bytes=max_body_bytes)
        except TimeoutError:
            return record(start, time.perf_counter() - start, error="timeout", censored=True,
                          detail=f"no answer within {timeout_s:g} s")
        except BoundedReadError as e:  # over the body cap: read no further, unusable
            return record(start, time.perf_counter() - start, error="bad_payload",
                          status=e.status_code, detail=_detail(str(e)))
        except httpx.TransportError as e:
            return record(start, time.perf_counter() - start, error="connect",
                          detail=_detail(f"{type(e).__name__}: {e}"))
        except httpx.HTTPError as e:  # e.g. a broken content-encoding: an unusable answer
            return record(start, time.perf_counter() - start, error="bad_payload",
                          detail=_detail(f"{type(e).__name__}: {e}"))
        latency = time.perf_counter() - start
        wire = resp.wire
        if wire is not None and wire.complete is not None:  # stamped at the socket
            start = wire.start if due is None else due
            latency = wire.complete - start
        return _classified(api, resp, start, latency, record)
    except asyncio.CancelledError:
        on_cancel(record(start, time.perf_counter() - start, excluded="cancelled"))
        raise


def _classified(api: ImageAPI, resp: BoundedResponse, start: float, latency: float,
                record: Recorder) -> RequestRecord:
    """The record of an answer that arrived: an HTTP error, a bad payload, or its images."""
    answer: dict[str, Any] = {
        "status": resp.status_code,
        "server_timing": parse_server_timing(resp.headers.get("server-timing"))}
    kind = _status_kind(resp.status_code)
    if kind is not None:
        return record(start, latency, error=kind, detail=_detail(resp.text), **answer)
    try:
        payloads = tuple(api.images(resp.content))
    except BadPayloadError as e:
        return record(start, latency, error="bad_payload", detail=_detail(str(e)), **answer)
    return record(start, latency, images=tuple(digest(p) for p in payloads), payloads=payloads,
                  **answer)


def parse_server_timing(header: str | None) -> dict[str, float] | None:
    """``Server-Timing: queue;dur=12.5, inference;dur=800`` -> ``{"queue": 0.0125, ...}``.

    W3C Server Timing: comma-separated metrics, each a token name with ``;``-separated
    parameters whose values may be quoted strings (commas and semicolons inside quotes do not
    split). A metric whose name is not a token or whose ``dur`` is not a finite non-negative
    number is skipped; ``None`` when nothing usable is there. Never raises: what a server
    sends about its own timing is a hint, not part of the answer being judged.
    """
    if not header:
        return None
    out: dict[str, float] = {}
    for metric in _split_unquoted(header, ","):
        name, *params = (p.strip() for p in _split_unquoted(metric, ";"))
        if not _TOKEN.fullmatch(name):
            continue
        for p in params:
            key, _, value = p.partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if key.strip().lower() == "dur" and _NUMBER.fullmatch(value):
                dur = float(value)
                if math.isfinite(dur):
                    out[name] = dur / 1000.0
                break  # the first dur counts (W3C: later duplicates are ignored)
    return out or None


# RFC 9110 token, and a plain decimal number (no sign, no "inf"/"nan", no "1_000").
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _split_unquoted(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside double-quoted strings (backslash escapes honoured)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _status_kind(status: int) -> ErrorKind | None:
    if 200 <= status < 300:
        return None
    if status >= 500:
        return "http_5xx"
    if status >= 400:
        return "http_4xx"
    return "bad_payload"  # 1xx/3xx: redirects are not followed for measured requests


def _detail(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS - 3] + "..."


def images_of(records: Sequence[RequestRecord]) -> tuple[
        tuple[ImageFingerprint, ...], list[tuple[ImageFingerprint, ...]]]:
    """Green's images and those of every blue that returned some (empty if green has none)."""
    green = next(r.images for r in records if r.arm == "green")
    return green, [r.images for r in records if r.arm == "blue" and r.images and green]


async def decoded(records: list[RequestRecord]) -> list[RequestRecord]:
    """The records with full fingerprints (pixel hash, signature) of their images."""
    def compute() -> list[RequestRecord]:
        return [replace(r, images=tuple(fingerprint(p) for p in r.payloads)) if r.payloads
                else r for r in records]

    if sum(len(p) for r in records for p in r.payloads) > _INLINE_DECODE_BYTES:
        return await asyncio.to_thread(compute)
    return compute()
