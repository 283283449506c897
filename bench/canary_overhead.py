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

Beside the canary, at each level and against the same server process, two established load
generators run with the same number of requests in flight (``2c``, closed loop like theirs):
Debian's ``hey`` (the load tester Flagger ships; per-request latencies from ``-o csv``, the
first ``2c`` requests dropped as connection warm-up) and ``wrk`` (``bench/wrk_post.lua`` sends
the POST body and prints its latency percentiles). Neither reads ``Server-Timing``, so the bench
runs the loopback server with a log of its own per-request service time (read-to-answer,
:func:`serve_logged`), drained after each run: for hey and wrk the timer error is the
difference of the quantiles (latency P - service time P over the same run), for the canary it
stays paired per request. Their CPU time is the child's (``RUSAGE_CHILDREN``).

Goals (issue 18): the canary's P99 added latency within 1.5x of hey's at concurrency 32, and
under 2 ms at concurrency 1. Each is checked in the output, met or not, with the numbers.

    .venv/bin/python bench/canary_overhead.py            # writes bench/results/canary_overhead.md
    .venv/bin/python bench/canary_overhead.py --append   # adds a run to it
    .venv/bin/python bench/canary_overhead.py --service-ms 5 --seconds 0.2 --levels 1 2 \
        --out /tmp/x.md                                  # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar
from unittest import mock

import httpx
import numpy as np

from gates.canary import loopback, runner
from gates.canary.prompts import Prompt
from gates.canary.runner import CanaryConfig, run_canary
from gates.error_rate import ErrorRateGateSpec

ROOT = Path(__file__).resolve().parents[1]
PROMPT = (Prompt(id="bench", prompt="loopback", seed=1, width=64, height=64, steps=1),)
WARMUP = 5  # per arm
ROUTE = "/v1/images/generations"
BODY = '{"prompt": "loopback", "seed": 1, "n": 1, "size": "64x64"}'
WRK_SCRIPT = ROOT / "bench" / "wrk_post.lua"
TOOLS = ("hey", "wrk")
BEFORE = "canary, closed, before (httpx transport)"
Row = tuple[str, int, dict[str, float]]


class _LoggedProtocol(loopback._Protocol):  # the bench's own instrumentation of the server
    """The loopback server's protocol, unchanged, plus a log of each answer's service time."""

    log: ClassVar[list[float]] = []  # one server per process

    def _answer(self, path: str, body: bytes, t_read: float) -> None:
        super()._answer(path, body, t_read)
        self.log.append(time.perf_counter() - t_read)


def serve_logged(service_ms: float, log_path: Path) -> None:
    """Serve like ``python -m gates.canary.loopback`` (prints the URL) and, on SIGUSR1, write
    the service times (seconds) answered since the last dump to ``log_path``, atomically.

    Why: hey and wrk do not read the ``Server-Timing`` header, so the server keeps the measure
    the canary reads from it; one process serves every client, as the comparison requires.
    """
    behaviour = loopback.LoopbackBehaviour(service_s=service_ms / 1000)

    def dump() -> None:
        tmp = log_path.with_suffix(".tmp")
        tmp.write_text("".join(f"{v:.7f}\n" for v in _LoggedProtocol.log))
        _LoggedProtocol.log.clear()
        tmp.rename(log_path)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        rng, open_ = random.Random(0), set[asyncio.Transport]()
        server = await loop.create_server(lambda: _LoggedProtocol(behaviour, open_, rng),
                                          "127.0.0.1", 0)
        loop.add_signal_handler(signal.SIGUSR1, dump)
        print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


def drain(server: subprocess.Popen[str], log_path: Path) -> np.ndarray:
    """The server's service times (seconds) since the last drain."""
    server.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not log_path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the loopback server did not dump its service-time log")
        time.sleep(0.01)
    values = np.array([float(x) for x in log_path.read_text().split()])
    log_path.unlink()
    return values


def quantile_rows(lat: np.ndarray, svc: np.ndarray, service_s: float, cpu_s: float,
                  requests: float, p50: float | None = None,
                  p99: float | None = None) -> dict[str, float]:
    """Added latency and unpaired timer error (latency quantile - service-time quantile) in
    milliseconds; ``p50``/``p99`` (seconds) when the tool gives only its percentiles."""
    l50 = p50 if p50 is not None else float(np.percentile(lat, 50))
    l99 = p99 if p99 is not None else float(np.percentile(lat, 99))
    s50, s99 = (float(np.percentile(svc, q)) for q in (50, 99))
    return {"requests": requests, "added_p50": (l50 - service_s) * 1e3,
            "added_p99": (l99 - service_s) * 1e3, "timer_p50": (l50 - s50) * 1e3,
            "timer_p99": (l99 - s99) * 1e3, "server_p99": (s99 - service_s) * 1e3,
            "cpu_ms": cpu_s * 1e3 / max(requests, 1.0)}


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_hey(url: str, in_flight: int, requests: int, service_s: float,
            server: subprocess.Popen[str], log_path: Path) -> dict[str, float]:
    """``hey`` with ``in_flight`` workers; the first ``in_flight`` requests are warm-up."""
    drain(server, log_path)
    cpu0 = _child_cpu()
    out = subprocess.run(
        ["hey", "-n", str(requests + in_flight), "-c", str(in_flight), "-m", "POST",
         "-T", "application/json", "-d", BODY, "-t", "10", "-o", "csv", url + ROUTE],
        capture_output=True, text=True, check=True, timeout=600).stdout
    cpu = _child_cpu() - cpu0
    svc = drain(server, log_path)
    rows = [line.split(",") for line in out.splitlines()[1:] if line]
    rows.sort(key=lambda r: float(r[7]))  # by start offset
    ok = [float(r[0]) for r in rows[in_flight:] if r[6] == "200"]
    out_row = quantile_rows(np.array(ok), svc[in_flight:], service_s, cpu, float(len(ok)))
    out_row["failed"] = float(len(rows) - in_flight - len(ok))
    return out_row


def run_wrk(url: str, in_flight: int, seconds: float, service_s: float,
            server: subprocess.Popen[str], log_path: Path) -> dict[str, float]:
    """``wrk`` with ``in_flight`` connections for ``seconds`` (whole seconds, at least 1)."""
    drain(server, log_path)
    cpu0 = _child_cpu()
    out = subprocess.run(
        ["wrk", "-t", str(min(2, in_flight)), "-c", str(in_flight),
         "-d", f"{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(WRK_SCRIPT),
         url + ROUTE], capture_output=True, text=True, check=True, timeout=600).stdout
    cpu = _child_cpu() - cpu0
    svc = drain(server, log_path)
    line = next(x for x in out.splitlines() if x.startswith("WRK "))
    f = {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    out_row = quantile_rows(np.array([]), svc, service_s, cpu, f["requests"],
                            p50=f["p50_us"] / 1e6, p99=f["p99_us"] / 1e6)
    out_row["failed"] = f["errors"]
    return out_row


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


def _stock_transport(ssl_context: ssl.SSLContext) -> httpx.AsyncBaseTransport:
    """httpx's own transport, as the canary had before :mod:`gates.wire`: its clock stops
    where the request's coroutine resumes after the last body byte."""
    return httpx.AsyncHTTPTransport(verify=ssl_context, limits=httpx.Limits(
        max_connections=None, max_keepalive_connections=None))


def measure(url: str, mode: str, concurrency: int, slices: int,
            service_s: float, *, before: bool = False) -> dict[str, float]:
    """One canary run (closed loop or Poisson open loop); percentiles in milliseconds.
    ``before``: with httpx's own transport (the baseline) instead of the canary's timed one."""
    cfg = CanaryConfig(
        blue_url=url, green_url=url, prompts=PROMPT, concurrency=concurrency,
        rate=concurrency / service_s if mode == "open" else None,
        max_requests=slices, warmup_requests=WARMUP, timeout_s=5.0, deadline_s=600.0,
        # no latency judge (lock step makes one arm systematically later: it may fail and stop
        # the run) and an error gate that cannot pass: the run goes on for the whole budget
        latency_gates=(),
        error_gate=ErrorRateGateSpec(max_rate=0.01, min_requests=slices + 1))
    transport = mock.patch.object(runner, "TimedTransport", _stock_transport) if before \
        else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as tmp, transport:
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
    p.add_argument("--service-ms", type=float, default=200.0)
    p.add_argument("--levels", type=int, nargs="+", default=[1, 16, 32])
    p.add_argument("--seconds", type=float, default=10.0, help="target duration per run")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "canary_overhead.md")
    p.add_argument("--append", action="store_true", help="add this run to --out")
    p.add_argument("--serve-logged", type=Path, help=argparse.SUPPRESS)  # the server process
    a = p.parse_args()
    if a.serve_logged is not None:
        serve_logged(a.service_ms, a.serve_logged)
        return
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        sys.exit(f"canary_overhead: {', '.join(missing)} not installed (apt-get install hey wrk)")
    service_s = a.service_ms / 1000
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp, "svc.log")
        server = subprocess.Popen([sys.executable, __file__, "--service-ms", str(a.service_ms),
                                   "--serve-logged", str(log_path)],
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            load_before = os.getloadavg()[0]
            floor = bare_httpx(url, max(40, int(a.seconds / service_s)), service_s)
            rows: list[Row] = []
            for c in a.levels:
                slices = max(40, int(a.seconds / service_s * c))
                rows.append((BEFORE, c, measure(url, "closed", c, slices, service_s,
                                                before=True)))
                for mode in ("closed", "open"):
                    rows.append((f"canary, {mode}", c, measure(url, mode, c, slices,
                                                               service_s)))
                rows.append(("hey", c, run_hey(url, 2 * c, 2 * slices, service_s, server,
                                               log_path)))
                rows.append(("wrk", c, run_wrk(url, 2 * c, a.seconds, service_s, server,
                                               log_path)))
                for client, _, r in rows[-5:]:
                    print(f"{client} {c}: {json.dumps({k: round(v, 3) for k, v in r.items()})}",
                          file=sys.stderr)
        finally:
            server.terminate()
            server.wait(10)
    write(a, floor, rows, load_before)


def goals(rows: list[Row]) -> list[str]:
    """The ratio table canary/hey per level and the two goals, met or not, with numbers."""
    by = {(client, c): r["added_p99"] for client, c, r in rows}
    levels = sorted({c for _, c, _ in rows})
    lines = ["P99 added latency (ms) side by side, and the ratio canary/hey:", "",
             "| slices in flight | requests in flight | canary closed, before (httpx "
             "transport) | canary closed | canary open | hey | wrk | closed/hey | open/hey |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in levels:
        hey = by[("hey", c)]
        lines.append(f"| {c} | {2 * c} | {by[(BEFORE, c)]:.3f} | {by[('canary, closed', c)]:.3f} | "
                     f"{by[('canary, open', c)]:.3f} | {hey:.3f} | {by[('wrk', c)]:.3f} | "
                     f"{_ratio(by[('canary, closed', c)], hey)} | "
                     f"{_ratio(by[('canary, open', c)], hey)} |")
    lines.append("")
    for mode in ("closed", "open"):
        if 32 in levels:
            can, hey = by[(f"canary, {mode}", 32)], by[("hey", 32)]
            lines.append(f"- Goal: canary P99 added within 1.5x of hey's at concurrency 32, "
                         f"{mode}: {'met' if can <= 1.5 * max(hey, 0.0) else 'NOT met'} "
                         f"({can:.3f} ms vs hey {hey:.3f} ms, ratio {_ratio(can, hey)}).")
        if 1 in levels:
            one = by[(f"canary, {mode}", 1)]
            lines.append(f"- Goal: canary P99 added under 2 ms at concurrency 1, {mode}: "
                         f"{'met' if one < 2 else 'NOT met'} ({one:.3f} ms).")
    return lines


def _ratio(num: float, den: float) -> str:
    return f"{num / den:.2f}" if den > 0 else "n/a"


def write(a: argparse.Namespace, floor: dict[str, float], rows: list[Row],
          load_before: float) -> None:
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
        "Concurrency = slices in flight (1 green + 1 blue request each, so twice as many "
        "requests in flight; hey and wrk run with that many requests in flight). closed: that "
        "many slices always in flight, in lock step (worst case); open: Poisson arrivals at the "
        "same mean concurrency; hey and wrk are closed loops. Milliseconds, every measured "
        "request (warm-up excluded; wrk's first requests included). Timer error: paired per "
        "request for the canary and the floor, quantile difference for hey and wrk.",
        "",
        "| client | slices in flight | requests | added P50 | added P99 | timer error P50 | "
        "timer error P99 | server overshoot P99 | client CPU ms/request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        _row("bare httpx, 1 request (floor)", "-", floor),
        *(_row(client, str(c), r) for client, c, r in rows),
        "",
        *goals(rows),
    ]
    load = os.getloadavg()
    lines += [
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, httpx {httpx.__version__}, {_versions()}; 1-minute "
        f"load average "
        f"{load_before:.2f} before, {load[0]:.2f} after (shared machine).",
        "",
    ]
    with a.out.open("a" if a.append else "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def _versions() -> str:
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True,
                         check=False).stdout.split()
    hey = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "hey"], capture_output=True,
                         text=True, check=False).stdout.strip()
    return f"hey {hey or 'unknown'}, wrk {wrk[1] if len(wrk) > 1 else 'unknown'}"


def _row(client: str, slices: str, r: dict[str, float]) -> str:
    return (f"| {client} | {slices} | {int(r['requests'])} | {r['added_p50']:.3f} | "
            f"{r['added_p99']:.3f} | {r['timer_p50']:.3f} | {r['timer_p99']:.3f} | "
            f"{r['server_p99']:.3f} | {r['cpu_ms']:.3f} |")


if __name__ == "__main__":
    main()
