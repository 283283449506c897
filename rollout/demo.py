"""``rollout demo``: a whole blue-green rollout on this machine, end to end, for real.

Two reference SD servers (tiny model, one CPU thread each) as blue and green, HAProxy in front
(runtime API for the weights), Prometheus scraping both, a trickle of user traffic through
HAProxy, and ``rollout promote`` on a generated local policy. Green comes from a scenario; every
degraded scenario runs the server's *real* slow or broken path except ``tail-latency`` and
``errors``, which use its labelled fault-injection options:

==================  =============================================================  ============
scenario            green server                                                   caught by
==================  =============================================================  ============
healthy             same as blue                                                   (promoted)
cpu-fallback        ``--device cuda`` without CUDA: really runs on the CPU          admission
ort-fallback        ORT UNet asking for CUDA: ORT silently binds the CPU EP         admission
generic-attention   ``--attention math``: generic kernels where blue runs SDPA         admission
tail-latency        stalls 20% of batches by 0.6 s (fault injection)               p95 canary
errors              fails 20% of requests with a 500 (fault injection)             error-rate
==================  =============================================================  ============

The demo has no container image, so each server declares a *release id* as its image
(``ROLLOUT_IMAGE_REF=demo/sd-server:<scenario>``, ``ROLLOUT_IMAGE_DIGEST`` = sha256 of its
command-line arguments, :func:`release_digest`): every admitted green leaves a release baseline
under ``ROOT/state/baselines``, which survives the next demo run, so ``rollout baselines diff``
compares two demo releases (docs/images.md).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import yaml

from rollout import engine
from rollout.baselines import BASELINES_DIR
from rollout.engine import Callbacks, Engine
from rollout.errors import BadInputError, RolloutError
from rollout.local.haproxy import start_haproxy
from rollout.local.processes import ManagedProcess, free_port, start_process, wait_until
from rollout.local.prometheus import start_prometheus
from rollout.machine import RolloutStatus
from rollout.policy.loader import load_policy

__all__ = ["SCENARIOS", "SERVER_ARGS", "demo_policy", "release_digest", "run_demo",
           "sd_server_binary", "server_ready"]

SERVER_ARGS = ["--model", "tiny", "--device", "cpu", "--threads", "1", "--host", "127.0.0.1",
         "--max-batch", "1"]
SCENARIOS: dict[str, list[str]] = {
    "healthy": [],
    "cpu-fallback": ["--device", "cuda", "--allow-degraded"],
    "ort-fallback": ["--unet-backend", "onnxruntime", "--ort-providers",
                     "CUDAExecutionProvider,CPUExecutionProvider", "--allow-degraded"],
    "generic-attention": ["--attention", "math", "--allow-degraded"],
    "tail-latency": ["--fault-stall-rate", "0.2", "--fault-stall-seconds", "0.6",
                     "--fault-seed", "7"],
    "errors": ["--fault-error-rate", "0.2", "--fault-seed", "7"],
}


def demo_policy(*, blue: str, green: str, socket: Path, prometheus: str,
                prompts: str = "tiny-64") -> dict[str, Any]:
    """The local demo's RolloutPolicy (as a document, written next to the state)."""
    return {
        "apiVersion": "rollout-gates.dev/v1alpha1",
        "kind": "RolloutPolicy",
        "metadata": {"name": "demo"},
        "spec": {
            "platform": "local",
            "targets": {"blue": {"type": "url", "url": blue},
                        "green": {"type": "url", "url": green}},
            "router": {"type": "haproxy", "socket": str(socket), "backend": "sd"},
            "steps": [{"weight": 0}, {"weight": 50, "canary": False, "pauseSeconds": 6}],
            "canary": {"prompts": prompts, "api": "openai", "maxRequests": 800,
                       "concurrency": 2, "bluePerGreen": 1, "warmupRequests": 2,
                       "timeoutSeconds": 20, "deadlineSeconds": 200},
            "metrics": {"prometheus": {"url": prometheus, "windowSeconds": 10,
                                       "staleAfterSeconds": 5}},
            "gates": [
                {"type": "capability", "name": "capability", "fingerprint": "same-as-blue"},
                {"type": "latency", "name": "p95", "quantile": 0.95, "maxRatio": 1.1,
                 "alpha": 0.01},
                {"type": "latency", "name": "p95-live", "source": "prometheus",
                 "maxRatio": 2.0, "tolerance": 0.15},
                {"type": "error-rate", "name": "errors", "maxRate": 0.05},
            ],
            "rollback": {"onInconclusive": "rollback", "scaleDownDelaySeconds": 0},
            "promotion": {"auto": True, "verifySeconds": 10},
        },
    }


class _UserTraffic(threading.Thread):
    """A trickle of real requests through HAProxy, so live gates judge routed traffic."""

    def __init__(self, url: str, every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.url, self.every = url, every_s
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        body = {"prompt": "a user request", "size": "64x64", "steps": 4, "seed": 1}
        with httpx.Client(timeout=30) as c:
            while not self.stop.wait(self.every):
                try:
                    c.post(f"{self.url}/v1/images/generations", json=body)
                    self.sent += 1
                except httpx.HTTPError:
                    pass


def release_digest(args: list[str]) -> str:
    """The demo's stand-in for an image digest: sha256 of the server's arguments (the same
    arguments are the same release)."""
    return "sha256:" + hashlib.sha256(json.dumps(args).encode()).hexdigest()


def _fresh_root(root: Path) -> None:
    """An empty ``root``, except the release baselines of earlier runs."""
    kept = root / "state" / BASELINES_DIR
    parked = root.with_name(f".{root.name}-{BASELINES_DIR}")
    shutil.rmtree(parked, ignore_errors=True)
    if kept.is_dir():
        kept.rename(parked)
    shutil.rmtree(root, ignore_errors=True)
    (root / "state").mkdir(parents=True)
    if parked.is_dir():
        parked.rename(kept)


def sd_server_binary() -> str:
    exe = Path(sys.executable).with_name("sd-server")
    found = str(exe) if exe.exists() else shutil.which("sd-server")
    if found is None:
        raise BadInputError("sd-server is not installed: pip install -e 'deploy/sd-server[ort]' "
                            "(make demo does this)")
    return found


def server_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run_demo(scenario: str, *, root: Path, callbacks: Callbacks,
             on_result: Callable[[Engine, RolloutStatus], int]) -> int:
    """Start the stack, promote green through the engine, stop everything.

    ``on_result`` sees the engine and the final status while the stack still runs (so the
    router's weights can be read back) and returns the exit code.
    """
    if scenario not in SCENARIOS:
        raise BadInputError(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
    root = root.resolve()
    _fresh_root(root)
    ports = {k: free_port() for k in ("blue", "green", "front", "prom")}
    urls = {c: f"http://127.0.0.1:{ports[c]}" for c in ("blue", "green")}
    procs: list[ManagedProcess] = []
    traffic = _UserTraffic(f"http://127.0.0.1:{ports['front']}")
    server = sd_server_binary()
    policy_file = root / "policy.yaml"
    try:
        print(f"== scenario {scenario}: green = sd-server {' '.join(SCENARIOS[scenario])}",
              flush=True, file=sys.stderr)
        for color, release in (("blue", "healthy"), ("green", scenario)):
            args = [*SERVER_ARGS, *SCENARIOS[release]]
            procs.append(start_process(f"sd-{color}", [
                server, *args, "--port", str(ports[color])],
                env={"OMP_NUM_THREADS": "1", "ROLLOUT_IMAGE_REF": f"demo/sd-server:{release}",
                     "ROLLOUT_IMAGE_DIGEST": release_digest(args)},
                log=root / f"sd-{color}.log"))
        for color, proc in zip(("blue", "green"), procs, strict=True):
            wait_until(partial(server_ready, urls[color]), timeout=240, what=f"sd-server {color}",
                       proc=proc.proc, log=proc.log)
        print(f"== blue {urls['blue']} and green {urls['green']} ready", flush=True,
              file=sys.stderr)
        hap, sock = start_haproxy(root / "haproxy", frontend_port=ports["front"],
                                  blue=f"127.0.0.1:{ports['blue']}",
                                  green=f"127.0.0.1:{ports['green']}")
        procs.append(hap)
        procs.append(start_prometheus(root / "prometheus", port=ports["prom"], targets={
            "blue": f"127.0.0.1:{ports['blue']}", "green": f"127.0.0.1:{ports['green']}"}))
        print(f"== HAProxy on :{ports['front']} (admin socket {sock}), Prometheus on "
              f":{ports['prom']}", flush=True, file=sys.stderr)
        policy_file.write_text(yaml.safe_dump(demo_policy(
            blue=urls["blue"], green=urls["green"], socket=sock,
            prometheus=f"http://127.0.0.1:{ports['prom']}"), sort_keys=False))
        traffic.start()
        print(f"== rollout promote {policy_file}", flush=True, file=sys.stderr)
        state = root / "state"
        e = engine.build(load_policy(policy_file), state_dir=state, callbacks=callbacks)
        code = on_result(e, engine.promote(e, state_dir=state, ready_timeout=300,
                                           callbacks=callbacks))
    finally:
        traffic.stop.set()
        for p in reversed(procs):
            p.stop()
        print(f"== stopped the stack; logs and state in {root} (user requests sent through "
              f"HAProxy: {traffic.sent})", flush=True, file=sys.stderr)
    _write_report(root)
    return code


def _write_report(root: Path) -> None:
    """The rollout's HTML report next to its state, and where it is (``make demo`` ends here)."""
    from rollout.report import load_rollout, write_report

    try:
        path = write_report(load_rollout("demo", root / "state"), root / "report.html")
    except (RolloutError, OSError, ValueError) as e:
        print(f"== no report: {e}", flush=True, file=sys.stderr)
        return
    print(f"== report: {path}", flush=True, file=sys.stderr)
