"""A fault-injecting HTTP peer: an image server (OpenAI images API) that misbehaves on demand.

Why: the canary, the controller and the CLI must survive what a broken or hostile green can
answer, and each failure mode must be reproducible over a real socket, not mocked inside the
client. :class:`FaultyPeer` answers ``POST`` image requests with a healthy gradient PNG per seed
(``ok``, never blank, so blue's images are a reference for validity) or with one of
:data:`FAULTS`; ``GET`` is proxied to ``proxy`` when given (so a faulty green still looks ready
and admissible to a controller) and answers 200 ``{}`` otherwise. ``fault`` may be changed
while it serves. Every fault is bounded in time on the peer's side too: a slow-loris drips for
at most ``drip_s`` seconds.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import httpx
import numpy as np
from PIL import Image

__all__ = ["FAULTS", "FaultyPeer", "gradient_png", "png_bomb"]

#: What the peer can answer to an image request, healthy (``ok``) first.
FAULTS = ("ok", "invalid_json", "html", "empty", "truncated_b64", "not_png", "truncated_png",
          "bomb", "huge", "slowloris", "reset", "too_many", "unavailable", "redirect",
          "wrong_count", "blank", "wrong_size", "nan_json")


def gradient_png(side: int, seed: int) -> bytes:
    """A ``side`` x ``side`` RGB PNG that differs per seed and is far from constant."""
    y, x = np.mgrid[0:side, 0:side]
    base = (x * 255 // max(side - 1, 1) + seed) % 256
    img = np.stack([base, (y * 255 // max(side - 1, 1)) % 256, (base + y) % 256], axis=-1)
    out = io.BytesIO()
    Image.fromarray(img.astype(np.uint8), "RGB").save(out, format="PNG")
    return out.getvalue()


def png_bomb(side: int = 20000) -> bytes:
    """A 1-bit ``side`` x ``side`` black PNG: ~50 KB on the wire, 400 MB once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\0" * (1 + (side + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row * 1000) for _ in range(side // 1000)) + z.flush()
    head = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def _blank_png(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side)).save(out, format="PNG")
    return out.getvalue()


class FaultyPeer:
    """A threaded loopback image server answering with ``fault`` (see the module docstring).

    Attributes:
        requests: image requests received so far.
    """

    def __init__(self, fault: str = "ok", *, proxy: str | None = None, side: int = 64,
                 retry_after: int = 1, drip_s: float = 5.0) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        self.fault = fault
        self.requests = 0
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def send(self, status: int, body: bytes, ctype: str = "application/json",
                     extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if proxy is None:
                    self.send(200, b"{}")
                    return
                r = httpx.get(proxy + self.path, timeout=30)
                self.send(r.status_code, r.content, r.headers.get("content-type", "text/plain"))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body: dict[str, Any] = json.loads(self.rfile.read(length) or b"{}")
                peer.requests += 1
                peer.answer(self, peer.fault, int(body.get("n", 1)), int(body.get("seed", 0)))

        self._side, self._retry_after, self._drip_s = side, retry_after, drip_s
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, h: Any, fault: str, n: int, seed: int) -> None:
        """Write the answer ``fault`` gives to a request for ``n`` images of ``seed``."""
        side = self._side
        images = {"ok": lambda: [gradient_png(side, seed)] * n,
                  "not_png": lambda: [b"GIF89a" + bytes(64)] * n,
                  "truncated_png": lambda: [gradient_png(side, seed)[:200]] * n,
                  "bomb": lambda: [png_bomb()] * n,
                  "wrong_count": lambda: [gradient_png(side, seed)] * (n + 1),
                  "blank": lambda: [_blank_png(side)] * n,
                  "wrong_size": lambda: [gradient_png(side * 2, seed)] * n}
        if fault in images:
            data = [{"b64_json": base64.b64encode(p).decode()} for p in images[fault]()]
            h.send(200, json.dumps({"created": 0, "data": data}).encode())
        elif fault == "truncated_b64":
            b64 = base64.b64encode(gradient_png(side, seed)).decode()[:-7]
            h.send(200, json.dumps({"created": 0, "data": [{"b64_json": b64}] * n}).encode())
        elif fault == "nan_json":
            h.send(200, b'{"created": NaN, "data": [{"b64_json": NaN}]}')
        else:
            self._broken_transport(h, fault)

    def _broken_transport(self, h: Any, fault: str) -> None:
        """Faults of the HTTP exchange itself rather than of the images."""
        if fault == "invalid_json":
            h.send(200, b'{"data": [{"b64_json": "iVBOR')
        elif fault == "html":
            h.send(200, b"<html><body>Welcome to nginx!</body></html>", "text/html")
        elif fault == "empty":
            h.send(200, b"")
        elif fault == "huge":
            h.send(200, b'{"data": "' + b"A" * (50 << 20) + b'"}')
        elif fault == "too_many":
            h.send(429, b'{"error": "queue full"}', extra={"Retry-After": str(self._retry_after)})
        elif fault == "unavailable":
            h.send(503, b'{"error": "warming up"}')
        elif fault == "redirect":
            h.send(307, b"", extra={"Location": "http://127.0.0.1:9/v1/images/generations"})
        elif fault == "slowloris":
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", "1000000")
            h.end_headers()
            end = time.monotonic() + self._drip_s
            with contextlib.suppress(OSError):  # the client gave up: its right
                while time.monotonic() < end:
                    h.wfile.write(b" ")
                    h.wfile.flush()
                    time.sleep(0.2)
            h.close_connection = True
        elif fault == "reset":  # RST instead of an answer
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            h.close_connection = True

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultyPeer:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
