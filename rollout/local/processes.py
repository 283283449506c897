"""Starting and stopping helper processes (HAProxy, Prometheus, SD servers) on loopback.

Why a module of its own: the demo, the controller's ``process`` targets and the end-to-end tests
all need "start this binary, wait until it answers, always stop it", and a half-started
Prometheus left behind on a shared 2-core machine ruins every later timing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rollout.errors import BadInputError, UnavailableError

__all__ = ["ManagedProcess", "free_port", "require_binary", "start_process", "wait_until"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_binary(name: str, package: str) -> str:
    """Absolute path of ``name`` or a BadInputError saying how to install it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        raise BadInputError(f"{name} is not installed: run 'sudo apt-get install -y {package}' "
                            f"(Debian/Ubuntu), or 'make demo' which installs it")
    return path


def wait_until(check: Callable[[], bool], *, timeout: float, what: str,
               proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    """Poll ``check`` until it is true; fail with the process log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise UnavailableError(f"{what} exited with code {proc.returncode}:\n{tail}")
        time.sleep(0.05)
    raise UnavailableError(f"{what} not ready after {timeout:.0f} s")


@dataclass
class ManagedProcess:
    """A child process with its log file; ``stop`` is idempotent."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL if it lingers."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)
        except ProcessLookupError:
            pass


def start_process(name: str, argv: Sequence[str], *, log: Path,
                  env: dict[str, str] | None = None, cwd: Path | None = None) -> ManagedProcess:
    """Start ``argv`` in its own process group with stdout/stderr to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                cwd=cwd, start_new_session=True)
    return ManagedProcess(name=name, proc=proc, log=log)
