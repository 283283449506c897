"""Small in-memory stand-ins shared by tests that drive the real Controller and store."""

from __future__ import annotations

import socketserver
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

from rollout.machine import Weights


class Router:
    """A traffic router that applies every change at once and reads it back exactly."""

    def __init__(self) -> None:
        self.weights = Weights(blue=100, green=0)

    def check(self) -> None:
        pass

    def set_weights(self, weights: Weights) -> None:
        self.weights = weights

    def get_weights(self) -> Weights:
        return self.weights


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default listen backlog of 5 drops SYNs under 16 clients


S = TypeVar("S", bound=socketserver.BaseServer)


@contextmanager
def serving(server: S) -> Iterator[S]:
    """``server`` answering in a daemon thread for the ``with`` block, then closed."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


#: argv prefix: run a command under a small Python parent that reports its peak RSS on stderr.
#: A command started straight from a large pytest process inherits that process's RSS
#: high-water mark at exec (Linux), so RUSAGE_CHILDREN read in pytest reports pytest's size.
PEAK_WRAPPER = [sys.executable, "-c", (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "sys.stderr.write('\\npeak-rss-kib %d\\n' % "
    "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")]


def split_peak(stderr: str) -> tuple[str, int]:
    """The command's stderr without :data:`PEAK_WRAPPER`'s line, and its peak RSS in bytes."""
    head, _, tail = stderr.rpartition("\npeak-rss-kib ")
    return head, int(tail.split()[0]) * 1024


def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes,
          content_type: str = "application/json") -> None:
    """Answer one request of a test server with ``body`` and its length."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def serve_text(render: Callable[[], str],
               content_type: str = "text/plain; version=0.0.4") -> ThreadingHTTPServer:
    """A loopback HTTP server answering every GET with ``render()`` (a /metrics endpoint, or
    a backend that says which colour it is).

    Call ``shutdown()`` when done; ``server_port`` says where it listens.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            reply(self, 200, render().encode(), content_type)

        def log_message(self, *args: object) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def url_policy(name: str, blue: str, green: str, spec: str) -> str:
    """A RolloutPolicy document whose targets are the two URLs; ``spec`` is the rest of its
    ``spec`` block, indented by two spaces."""
    return (f"apiVersion: rollout-gates.dev/v1alpha1\nkind: RolloutPolicy\n"
            f"metadata: {{name: {name}}}\nspec:\n  targets:\n"
            f"    blue: {{type: url, url: \"{blue}\"}}\n"
            f"    green: {{type: url, url: \"{green}\"}}\n{spec}")
