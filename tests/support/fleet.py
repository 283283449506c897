"""Fleets for tests: several real servers per colour, and a platform that lists them.

* :func:`loopback_fleet` starts loopback image servers (:mod:`gates.canary.loopback`: a known
  service time, or 500s) in threads, one per behaviour;
* :func:`sd_fleet` starts real ``sd-server --model tiny`` processes (one CPU thread each), one
  per argument list, in parallel, and stops them;
* :class:`StaticPlatform` is a ``Platform`` whose colours are given instances (with pods and
  nodes), for the analyzer without a cluster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gates.canary.fleet import Instance
from gates.canary.loopback import LoopbackBehaviour, LoopbackServer
from rollout.demo import SERVER_ARGS, sd_server_binary, server_ready
from rollout.errors import BadInputError
from rollout.local.processes import ManagedProcess, free_port, start_process, wait_until
from rollout.machine import RolloutStatus

#: One thread per server, as every CPU test here: image bits depend on the thread count and
#: the machine is shared.
SD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@contextlib.contextmanager
def loopback_fleet(*behaviours: LoopbackBehaviour) -> Iterator[list[LoopbackServer]]:
    """One running loopback server per behaviour, in order."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(LoopbackServer(b)) for b in behaviours]


@contextlib.contextmanager
def sd_fleet(log_dir: Path, *extra_args: Sequence[str],
             ready_timeout: float = 240.0) -> Iterator[list[str]]:
    """Start one tiny SD server per argument list (``()`` for the default fast path) and yield
    their base URLs once every one answers ``/readyz``; stop them all afterwards."""
    binary = sd_server_binary()
    procs: list[ManagedProcess] = []
    urls: list[str] = []
    try:
        for n, args in enumerate(extra_args):
            port = free_port()
            procs.append(start_process(f"sd-{n}", [binary, *SERVER_ARGS, "--port", str(port),
                                                   *args],
                                       log=log_dir / f"sd-{n}.log", env=SD_ENV))
            urls.append(f"http://127.0.0.1:{port}")

        def ready(i: int) -> None:
            wait_until(lambda: server_ready(urls[i]), timeout=ready_timeout,
                       what=f"sd-server {urls[i]}", proc=procs[i].proc, log=procs[i].log)

        with ThreadPoolExecutor(len(urls)) as pool:
            list(pool.map(ready, range(len(urls))))
        yield urls
    finally:
        for p in procs:
            p.stop()


@dataclass
class StaticPlatform:
    """A ``Platform`` with fixed instances per colour and, optionally, ConfigMaps."""

    fleet: Mapping[str, Sequence[Instance]]
    config_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def check(self) -> None:
        pass

    def endpoints(self, color: str) -> list[str]:
        return [i.url for i in self.fleet[color]]

    def instances(self, color: str) -> list[Instance]:
        return list(self.fleet[color])

    def config_map_text(self, name: str, key: str) -> str:
        try:
            return self.config_maps[name][key]
        except KeyError as e:
            raise BadInputError(f"ConfigMap {name} key {key} not found") from e

    def wait_ready(self, color: str, *, timeout: float) -> None:
        pass

    def finish(self, status: RolloutStatus) -> None:
        pass
