"""A local stack for end-to-end tests: blue/green tiny SD servers behind a real HAProxy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from rollout.demo import SERVER_ARGS, sd_server_binary, server_ready
from rollout.local.haproxy import start_haproxy
from rollout.local.processes import ManagedProcess, free_port, start_process, wait_until
from rollout.machine import Weights
from rollout.routers.haproxy import HaproxyRouter

ROOT = Path(__file__).resolve().parents[2]
ROLLOUT = [sys.executable, "-m", "rollout.cli"]


@dataclass
class Stack:
    root: Path
    urls: dict[str, str]
    socket: Path
    procs: list[ManagedProcess]

    @property
    def router(self) -> HaproxyRouter:
        return HaproxyRouter(self.socket)

    def policy(self, name: str, gates: list[dict[str, Any]], **spec: Any) -> Path:
        doc = {
            "apiVersion": "rollout-gates.dev/v1alpha1", "kind": "RolloutPolicy",
            "metadata": {"name": name},
            "spec": {
                "targets": {c: {"type": "url", "url": u} for c, u in self.urls.items()},
                "router": {"type": "haproxy", "socket": str(self.socket)},
                "steps": [{"weight": 0}, {"weight": 50}, {"weight": 100}],
                "canary": {"prompts": str(ROOT / "policies/prompts/tiny-64.yaml"),
                           "maxRequests": 80, "concurrency": 2, "warmupRequests": 1,
                           "timeoutSeconds": 20, "deadlineSeconds": 60},
                "gates": gates,
                "rollback": {"onInconclusive": "rollback"},
                **spec,
            },
        }
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def rollout(self, *args: str, env: dict[str, str] | None = None,
                timeout: float = 180, prefix: tuple[str, ...] = ()
                ) -> subprocess.CompletedProcess[str]:
        """``rollout ARGS`` on this stack's state (``prefix``: argv it runs under)."""
        return subprocess.run([*prefix, *ROLLOUT, *args, "--state-dir", str(self.root / "state")],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              check=False,
                              env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})

    def weights(self) -> Weights:
        return self.router.get_weights()

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def start_stack(root: Path, green_args: list[str] | None = None) -> Stack:
    ports = {c: free_port() for c in ("blue", "green", "front")}
    urls = {c: f"http://127.0.0.1:{ports[c]}" for c in ("blue", "green")}
    procs = []
    try:
        for color, extra in (("blue", []), ("green", green_args or [])):
            procs.append(start_process(f"sd-{color}", [
                sd_server_binary(), *SERVER_ARGS, "--port", str(ports[color]), *extra],
                env={"OMP_NUM_THREADS": "1"}, log=root / f"sd-{color}.log"))
        for color, proc in zip(("blue", "green"), procs, strict=True):
            wait_until(partial(server_ready, urls[color]), timeout=240, what=f"sd-server {color}",
                       proc=proc.proc, log=proc.log)
        hap, sock = start_haproxy(root / "haproxy", frontend_port=ports["front"],
                                  blue=f"127.0.0.1:{ports['blue']}",
                                  green=f"127.0.0.1:{ports['green']}")
        procs.append(hap)
    except BaseException:
        for p in procs:
            p.stop()
        raise
    return Stack(root=root, urls=urls, socket=sock, procs=procs)


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON object a command printed with --output json."""
    doc: dict[str, Any] = json.loads(stdout[stdout.index("{"):])
    return doc
