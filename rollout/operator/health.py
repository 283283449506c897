"""``/healthz`` and ``/readyz`` for the kubelet's probes, served from a thread.

Why not kopf's liveness endpoint: it exists only once kopf runs, that is on the leader; a
standby blocked on the Lease is healthy and ready too (it is doing its job: waiting), and the
kubelet must not restart it for waiting. So the endpoints live from process start:

* ``/healthz``: 200 while the process works (leader or standby); 500 once it lost its Lease
  or its operator failed (the process exits right after anyway).
* ``/readyz``: 200 as a standby, and as the leader once kopf has listed its resources and
  started their daemons; 503 in between.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["Health", "serve_health"]


@dataclass
class Health:
    """What the probes report; set by the controller as it changes role."""

    failed: str | None = None
    role: str = "starting"
    synced: threading.Event = field(default_factory=threading.Event)

    def live(self) -> tuple[int, str]:
        """Status code and body of ``/healthz``."""
        return (500, f"unhealthy: {self.failed}\n") if self.failed else (200, f"ok {self.role}\n")

    def ready(self) -> tuple[int, str]:
        """Status code and body of ``/readyz``."""
        if self.failed:
            return 503, f"not ready: {self.failed}\n"
        if self.role == "standby" or (self.role == "leader" and self.synced.is_set()):
            return 200, f"ready {self.role}\n"
        return 503, f"not ready: {self.role}, not synced yet\n"


def serve_health(health: Health, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve ``health`` on ``host:port`` in a daemon thread; returns the server (shut it
    down with ``server.shutdown()``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            probes = {"/healthz": health.live, "/readyz": health.ready}
            probe = probes.get(self.path.split("?", 1)[0])
            code, body = probe() if probe else (404, "not found\n")
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return  # probes every few seconds would drown the controller's log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="health").start()
    return server
