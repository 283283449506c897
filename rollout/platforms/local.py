"""The ``local`` platform (the embedded default): SD servers on this machine.

Targets are URLs of running servers (``url``, or a fleet under ``urls``: the canary spreads
over every one of them) or processes this platform starts from the policy (one instance, on
this host's node). The status lives in SQLite under the state directory
(:class:`rollout.store.StateStore`) and the router comes from the policy's registry
(``haproxy`` or ``none``). Health and readiness probes are bounded reads
(:mod:`gates.bounded`): one deadline per exchange, a cap on the body, so a server that
trickles its answer cannot hold the controller.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import httpx

from gates.bounded import BoundedReadError, read_bounded
from gates.canary.fleet import Instance
from rollout.errors import BadInputError
from rollout.local.processes import ManagedProcess, start_process, wait_until
from rollout.machine import Phase, RolloutStatus
from rollout.policy.models import ProcessTarget, RolloutPolicy, UrlTarget
from rollout.routers import make_router
from rollout.routers.base import TrafficRouter
from rollout.store import StateStore

__all__ = ["LocalPlatform", "build_local"]

#: Per-probe deadlines (shortened further by ``spec.limits.exchangeSeconds``): the health check
#: before a rollout, and each poll of ``/readyz`` while waiting for a colour.
_HEALTH_S, _READY_POLL_S = 5.0, 2.0


class LocalPlatform:
    """Blue and green as URLs, or as processes started (and retired) here."""

    def __init__(self, policy: RolloutPolicy, *, log_dir: Path) -> None:
        self.targets: dict[str, UrlTarget | ProcessTarget] = {}
        for color in ("blue", "green"):
            t = getattr(policy.spec.targets, color)
            if not isinstance(t, UrlTarget | ProcessTarget):
                raise BadInputError(f"targets.{color} is of type {t.type}: the local platform "
                                    "takes url or process targets (use --platform kubernetes)")
            self.targets[color] = t
        self.log_dir = log_dir
        self.processes: dict[str, ManagedProcess] = {}
        self.limits = policy.spec.limits

    def _probe(self, url: str, deadline_s: float) -> int:
        """The status of ``GET url``, read within ``deadline_s`` (and the policy's exchange
        deadline) and the policy's cap on probe bodies.

        Raises:
            httpx.HTTPError: no answer.
            gates.bounded.BoundedReadError: a bound was broken.
        """
        with httpx.Client() as client:
            return read_bounded(
                client, client.build_request("GET", url),
                deadline_s=min(deadline_s, self.limits.exchange_seconds),
                max_bytes=self.limits.capabilities_max_bytes).status_code

    def check(self) -> None:
        """URL targets answer ``/healthz``; process targets' programs exist."""
        for color, t in self.targets.items():
            if isinstance(t, ProcessTarget):
                if shutil.which(t.command[0]) is None and not Path(t.command[0]).exists():
                    raise BadInputError(f"targets.{color}.command: {t.command[0]!r} not found")
                continue
            for url in t.base_urls:
                try:
                    status = self._probe(f"{url}/healthz", _HEALTH_S)
                except (httpx.HTTPError, BoundedReadError) as e:
                    raise BadInputError(f"targets.{color} {url} is unreachable ({e}); start "
                                        "the server or fix the URL") from e
                if not 200 <= status < 300:
                    raise BadInputError(f"targets.{color} {url}/healthz answers HTTP "
                                        f"{status}; start the server or fix the URL")

    def endpoints(self, color: str) -> list[str]:
        """Every URL of ``color``."""
        return [i.url for i in self.instances(color)]

    def instances(self, color: str) -> list[Instance]:
        """URL targets: each URL (pod and node unknown); a process target: its URL on this
        host (the node is the hostname)."""
        t = self.targets[color]
        if isinstance(t, ProcessTarget):
            return [Instance(t.url.rstrip("/"), node=socket.gethostname())]
        return [Instance(url) for url in t.base_urls]

    def config_map_text(self, name: str, key: str) -> str:
        """The local platform keeps no ConfigMaps.

        Raises:
            BadInputError: always, saying what to write instead.
        """
        raise BadInputError(f"canary.prompts names ConfigMap {name} (key {key}): only the "
                            "kubernetes platform reads ConfigMaps; give a prompt-set name, a "
                            "file or an inline set on the local platform")

    def wait_ready(self, color: str, *, timeout: float) -> None:
        """Start a process target if needed, then wait for ``/readyz`` to answer 200."""
        t = self.targets[color]
        proc = None
        if isinstance(t, ProcessTarget) and color not in self.processes:
            proc = self.processes[color] = start_process(
                f"sd-{color}", t.command, env=t.env, log=self.log_dir / f"{color}.log")
            timeout = t.ready_timeout_seconds
        urls = self.endpoints(color)

        def ready() -> bool:
            try:
                return all(self._probe(f"{url}/readyz", _READY_POLL_S) == 200 for url in urls)
            except (httpx.HTTPError, BoundedReadError):
                return False

        wait_until(ready, timeout=timeout, what=f"{color} at {', '.join(urls)}",
                   proc=proc.proc if proc else None, log=proc.log if proc else None)

    def finish(self, status: RolloutStatus) -> None:
        """Stop the process of the colour that lost (URL targets are not ours to stop)."""
        loser = {Phase.PROMOTED: "blue", Phase.ROLLED_BACK: "green",
                 Phase.ABORTED: "green"}.get(status.phase)
        if loser and loser in self.processes:
            self.processes.pop(loser).stop()


def build_local(policy: RolloutPolicy, *, state_dir: Path) -> tuple[
        LocalPlatform, StateStore, TrafficRouter]:
    """Platform, SQLite store and router of a local rollout."""
    return (LocalPlatform(policy, log_dir=state_dir / policy.metadata.name),
            StateStore(state_dir), make_router(policy.spec.router))


