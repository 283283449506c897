"""Run HAProxy in front of blue and green with its admin socket for the ``haproxy`` router."""

from __future__ import annotations

from pathlib import Path

from rollout.local.processes import ManagedProcess, require_binary, start_process, wait_until

__all__ = ["haproxy_config", "start_haproxy"]


def haproxy_config(*, frontend_port: int, blue: str, green: str, socket_path: Path,
                   backend: str = "sd", green_weight: int = 0) -> str:
    """An HTTP load balancer on 127.0.0.1 splitting ``backend`` between blue and green.

    ``blue``/``green`` are ``host:port``. Timeouts are SD-sized: a 1024 px, 50-step image
    can take a minute on a busy GPU.
    """
    return f"""\
global
    stats socket {socket_path} mode 600 level admin
    stats timeout 30s

defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    option http-server-close

frontend sd_in
    bind 127.0.0.1:{frontend_port}
    default_backend {backend}

backend {backend}
    balance roundrobin
    server blue {blue} weight {100 - green_weight}
    server green {green} weight {green_weight}
"""


def start_haproxy(root: Path, *, frontend_port: int, blue: str, green: str,
                  backend: str = "sd") -> tuple[ManagedProcess, Path]:
    """Write the config under ``root``, start ``haproxy -db``, wait for the admin socket.

    Returns the process and the admin socket path.
    """
    binary = require_binary("haproxy", "haproxy")
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "admin.sock"
    sock.unlink(missing_ok=True)
    cfg = root / "haproxy.cfg"
    cfg.write_text(haproxy_config(frontend_port=frontend_port, blue=blue, green=green,
                                  socket_path=sock, backend=backend))
    proc = start_process("haproxy", [binary, "-db", "-f", str(cfg)], log=root / "haproxy.log")
    wait_until(sock.exists, timeout=10, what="haproxy", proc=proc.proc, log=proc.log)
    return proc, sock
