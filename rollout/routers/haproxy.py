"""The ``haproxy`` router: weights through HAProxy's runtime API on its admin socket.

``set server BACKEND/SERVER weight N`` changes the split at once and exactly (HAProxy weights
are relative, so blue=90/green=10 is a 90/10 split); ``get weight`` reads it back. The socket
speaks one command per connection in non-interactive mode, which keeps this module a few lines
of the standard library instead of a client dependency.

Make-before-break. The runtime API changes one server per command, so a switch is two commands
and the state between them is served to users. Lowering first passes through 0/0, where HAProxy
answers "503 No server is available" to every request that arrives in between (16 clients
during 300 switches 100/0 <-> 0/100: hundreds of 503s), and a controller killed there leaves a
full outage until someone repairs it. ``set_weights`` therefore reads the current weights,
sends the command for the colour whose weight goes up first and the lowering one second: the
intermediate state is e.g. 100/100 (both serve, and since weights are relative that is merely a
50/50 split), never 0/0. A kill between the commands (crash point ``router:between``) leaves
both colours serving; the next controller re-applies the step and reaches the exact split.
Ordering by "largest increase first" is enough for any two-server change: if a colour rises,
the intermediate state keeps it above zero; if neither rises, the intermediate state can only
be 0/0 when the target is, and a 0/0 target is refused before anything is sent.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

from rollout.crashpoints import crash_here
from rollout.errors import BadInputError, RouterError, TemporaryError, UnavailableError
from rollout.machine import Weights

__all__ = ["HaproxyRouter", "haproxy_command"]

_log = logging.getLogger("rollout.routers.haproxy")
_MAX_ANSWER_BYTES = 1 << 20  # `get weight` answers ~20 bytes
_WEIGHT = re.compile(r"^(\d+) \(initial (\d+)\)")


def haproxy_command(socket_path: str | Path, command: str, *, timeout: float = 5.0) -> str:
    """Send one runtime-API command and return HAProxy's answer.

    Raises:
        UnavailableError: the socket is missing or does not answer.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(socket_path))
            s.sendall(command.encode() + b"\n")
            chunks, size, end = [], 0, time.monotonic() + timeout
            while chunk := s.recv(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > _MAX_ANSWER_BYTES or time.monotonic() > end:  # an endless answer
                    raise UnavailableError(f"HAProxy admin socket {socket_path}: answer over "
                                           f"{_MAX_ANSWER_BYTES} bytes or {timeout:g} s")
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise UnavailableError(f"HAProxy admin socket {socket_path}: {e.strerror}") from e
    except OSError as e:
        raise UnavailableError(f"HAProxy admin socket {socket_path}: {e}") from e
    return b"".join(chunks).decode(errors="replace").strip()


class HaproxyRouter:
    """Blue/green split between two servers of one HAProxy backend.

    One retry layer, here: a command the socket refuses or does not answer (a temporary
    error) is sent again up to ``retries`` times, waiting its ``delay`` hint doubled per
    attempt, so one hiccup never rolls a release back; what the controller sees is final.
    """

    def __init__(self, socket_path: str | Path, backend: str = "sd", blue_server: str = "blue",
                 green_server: str = "green", *, retries: int = 3, base_delay: float = 0.2,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.socket_path = Path(socket_path)
        self.backend = backend
        self.servers = {"blue": blue_server, "green": green_server}
        self.retries = retries
        self.base_delay = base_delay
        self.sleep = sleep

    def check(self) -> None:
        """The socket exists, answers, and knows both servers of the backend."""
        if not self.socket_path.exists():
            raise BadInputError(
                f"HAProxy admin socket {self.socket_path} does not exist: start HAProxy with "
                f"'stats socket {self.socket_path} level admin' or fix router.socket")
        for color in ("blue", "green"):
            self._get(color)

    def set_weights(self, weights: Weights) -> None:
        """Apply the split, raising the receiving colour before lowering the other.

        Both commands are always sent (re-applying a step repairs a half-applied one); an
        answer other than empty means HAProxy refused a command.

        Raises:
            BadInputError: the split is 0/0 (nothing would serve); nothing was sent.
            RouterError: HAProxy refused a command.
        """
        if weights.blue == 0 and weights.green == 0:
            raise BadInputError("weights 0/0 would leave no colour serving; refused")
        wanted = {"blue": weights.blue, "green": weights.green}
        # Raw reads, not get_weights(): a weight set by hand above 100 must not block a fix.
        rise = {color: value - self._get(color) for color, value in wanted.items()}
        first, second = sorted(wanted, key=rise.__getitem__, reverse=True)  # ties: blue first
        self._set(first, wanted[first])
        crash_here("router:between")
        self._set(second, wanted[second])

    def get_weights(self) -> Weights:
        """The weights HAProxy applies now."""
        return Weights(blue=self._get("blue"), green=self._get("green"))

    def _name(self, color: str) -> str:
        return f"{self.backend}/{self.servers[color]}"

    def _command(self, command: str, refused: Callable[[str], str | None]) -> str:
        """Send ``command``; retry temporary failures (``refused(answer)`` names a refusal)."""
        for attempt in range(self.retries + 1):
            try:
                answer = haproxy_command(self.socket_path, command)
                if (why := refused(answer)) is not None:
                    raise RouterError(why, delay=self.base_delay)
                return answer
            except TemporaryError as e:
                if attempt == self.retries:
                    raise
                wait = e.delay * 2 ** attempt
                _log.warning("HAProxy %r: %s; retry %d/%d in %.2f s", command, e, attempt + 1,
                             self.retries, wait)
                self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _set(self, color: str, value: int) -> None:
        def refused(answer: str) -> str | None:
            return f"HAProxy refused weight {value} for {self._name(color)}: {answer}" \
                if answer else None

        self._command(f"set server {self._name(color)} weight {value}", refused)

    def _get(self, color: str) -> int:
        answer = self._command(f"get weight {self._name(color)}", lambda _: None)
        m = _WEIGHT.match(answer)
        if m is None:
            raise BadInputError(f"HAProxy does not know server {self._name(color)}: {answer} "
                                f"(check router.backend and router.{color}Server)")
        return int(m.group(1))
