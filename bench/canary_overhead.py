"""Fidelity of the canary's clock: how much latency does the client itself add?

Runs the real canary runner (httpx, adapters, image hashes, judges, records) against the
loopback server (:mod:`gates.canary.loopback`) in its own process, whose answers leave exactly
``--service-ms`` after each request was read. Both arms point at that server. For each
concurrency level ``c`` (slices in flight; a slice is one green and one blue request, so ``2c``
requests are in flight) it runs

* **closed**: ``c`` slices in flight all the time. With a fixed service time the slices stay in
  lock step: all ``2c`` answers land within a millisecond or two, and the client parses them one
  after the other, so the last one's timestamp waits for all the others. The worst case, by
  construction;
* **open**: Poisson arrivals at ``c / service`` slices per second, the same mean concurrency
  with answers spread the way independent requests spread them,

and reports, over every measured request:

* **added latency** = measured latency - nominal service time: everything the canary's number
  holds that the server was not asked to spend (client, kernel loopback, server timer overshoot);
* **timer error** = measured latency - the server's own measure of the same request
  (``Server-Timing: svc``, read-to-write inside the server): what the client adds on top of what
  the server really spent;
* the server's own overshoot (svc - nominal), to tell the two apart;
* the client's CPU time per request (httpx, adapters, hashes, judges, records: all of it).

A first row measures bare httpx, one request at a time, against the same server: the floor this
machine and its load put under every number (on a busy shared VM, scheduler wake-ups alone cost
milliseconds that no client can avoid).

Target (issue 5): P99 added latency < 2 ms at concurrency 32.

    .venv/bin/python bench/canary_overhead.py            # writes bench/results/canary_overhead.md
    .venv/bin/python bench/canary_overhead.py --append   # adds a run to it
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from gates.canary.prompts import Prompt
from gates.canary.runner import CanaryConfig, run_canary
from gates.error_rate import ErrorRateGateSpec

ROOT = Path(__file__).resolve().parents[1]
PROMPT = (Prompt(id="bench", prompt="loopback", seed=1, width=64, height=64, steps=1),)
WARMUP = 5  # per arm


def percentiles(lat: np.ndarray, svc: np.ndarray, service_s: float) -> dict[str, float]:
    """Added latency, timer error and server overshoot percentiles in milliseconds."""
    added, timer, over = (lat - service_s) * 1e3, (lat - svc) * 1e3, (svc - service_s) * 1e3
    return {"requests": float(lat.size),
            "added_p50": float(np.percentile(added, 50)),
            "added_p99": float(np.percentile(added, 99)),
            "timer_p50": float(np.percentile(timer, 50)),
            "timer_p99": float(np.percentile(timer, 99)),
            "server_p99": float(np.percentile(over, 99))}


def bare_httpx(url: str, requests: int, service_s: float) -> dict[str, float]:
    """The floor: one httpx client, one request at a time, nothing else."""
    async def go() -> tuple[list[float], list[float]]:
        lat, svc = [], []
        async with httpx.AsyncClient(base_url=url) as client:
            for i in range(requests + WARMUP):
                t0 = time.perf_counter()
                r = await client.post("/v1/images/generations", json={"seed": i})
                if i >= WARMUP:
                    lat.append(time.perf_counter() - t0)
                    svc.append(float(r.headers["server-timing"].split("dur=")[1]) / 1e3)
        return lat, svc

    cpu0 = time.process_time()
    lat, svc = asyncio.run(go())
    out = percentiles(np.array(lat), np.array(svc), service_s)
    out["cpu_ms"] = (time.process_time() - cpu0) * 1e3 / len(lat)
    return out


def measure(url: str, mode: str, concurrency: int, slices: int,
            service_s: float) -> dict[str, float]:
    """One canary run (closed loop or Poisson open loop); percentiles in milliseconds."""
    cfg = CanaryConfig(
        blue_url=url, green_url=url, prompts=PROMPT, concurrency=concurrency,
        rate=concurrency / service_s if mode == "open" else None,
        max_requests=slices, warmup_requests=WARMUP, timeout_s=5.0, deadline_s=600.0,
        # an error gate that cannot pass keeps the run going for the whole budget
        error_gate=ErrorRateGateSpec(max_rate=0.01, min_requests=slices + 1))
    with tempfile.TemporaryDirectory() as tmp:
        cpu0 = time.process_time()
        asyncio.run(run_canary(cfg, records_dir=tmp))
        cpu = time.process_time() - cpu0
        rows = [json.loads(x) for x in Path(tmp, "requests.jsonl").read_text().splitlines()]
    answered = [r for r in rows if r["ok"] and r["error"] is None]
    out = percentiles(np.array([r["latency_s"] for r in answered]),
                      np.array([r["server_timing"]["svc"] for r in answered]), service_s)
    out["cpu_ms"] = cpu * 1e3 / len(rows)
    out["failed"] = float(len(rows) - 2 * WARMUP - len(answered))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--service-ms", type=float, default=500.0)
    p.add_argument("--levels", type=int, nargs="+", default=[1, 16, 32])
    p.add_argument("--seconds", type=float, default=12.0, help="target duration per run")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "canary_overhead.md")
    p.add_argument("--append", action="store_true", help="add this run to --out")
    a = p.parse_args()
    service_s = a.service_ms / 1000
    server = subprocess.Popen([sys.executable, "-m", "gates.canary.loopback", "--service-ms",
                               str(a.service_ms)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        load_before = os.getloadavg()[0]
        floor = bare_httpx(url, max(40, int(a.seconds / service_s)), service_s)
        rows = []
        for c in a.levels:
            slices = max(40, int(a.seconds / service_s * c))
            for mode in ("closed", "open"):
                r = measure(url, mode, c, slices, service_s)
                rows.append((mode, c, r))
                print(f"{mode} {c}: {json.dumps({k: round(v, 3) for k, v in r.items()})}",
                      file=sys.stderr)
    finally:
        server.terminate()
        server.wait(10)
    write(a, floor, rows, load_before)


def write(a: argparse.Namespace, floor: dict[str, float],
          rows: list[tuple[str, int, dict[str, float]]], load_before: float) -> None:
    try:
        import sniffio  # noqa: F401  (httpcore retries the import on every lock setup without)

        sniffio_state = "installed"
    except ImportError:
        sniffio_state = "NOT installed"
    lines = [] if a.append and a.out.exists() else [
        "# Canary client fidelity (bench/canary_overhead.py)", ""]
    lines += [
        f"## {time.strftime('%Y-%m-%d %H:%M %Z')}, service {a.service_ms:g} ms, sniffio "
        f"{sniffio_state}",
        "",
        "Concurrency = slices in flight (1 green + 1 blue request each). closed: that many "
        "slices always in flight, in lock step (worst case); open: Poisson arrivals at the same "
        "mean concurrency. Milliseconds, every measured request (warm-up excluded).",
        "",
        "| client | slices in flight | requests | added P50 | added P99 | timer error P50 | "
        "timer error P99 | server overshoot P99 | client CPU ms/request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        _row("bare httpx, 1 request (floor)", "-", floor),
        *(_row(f"canary, {mode}", str(c), r) for mode, c, r in rows),
        "",
    ]
    for mode in ("closed", "open"):
        r32 = next((r for m, c, r in rows if m == mode and c == 32), None)
        if r32 is not None:
            lines.append(f"Target P99 added < 2 ms at concurrency 32, {mode}: "
                         f"{'met' if r32['added_p99'] < 2 else 'NOT met'} "
                         f"({r32['added_p99']:.3f} ms).")
    load = os.getloadavg()
    lines += [
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, httpx {httpx.__version__}; 1-minute load average "
        f"{load_before:.2f} before, {load[0]:.2f} after (shared machine).",
        "",
    ]
    with a.out.open("a" if a.append else "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def _row(client: str, slices: str, r: dict[str, float]) -> str:
    return (f"| {client} | {slices} | {int(r['requests'])} | {r['added_p50']:.3f} | "
            f"{r['added_p99']:.3f} | {r['timer_p50']:.3f} | {r['timer_p99']:.3f} | "
            f"{r['server_p99']:.3f} | {r['cpu_ms']:.3f} |")


if __name__ == "__main__":
    main()
