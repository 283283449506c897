"""GPU validation: blue-green rollouts and the canary's before/after table on real GPUs.

Two parts, sharing one set of SD servers (SD 1.5's architecture, ``sd15-arch``, random weights):

* ``--rollouts``: ``rollout promote`` with a fast blue and each green, through HAProxy when its
  binary runs here (else the ``none`` router, said so in the results). Does the controller
  promote the fast path and roll back each degraded one, and with how many canary requests and
  seconds? Each rollout's HTML report (``rollout report``) is kept.
* ``--table``: ``rollout canary`` cells ``path:workload:concurrency[:budget[:deadline_s]]``,
  green = ``path`` against the fast blue: P50/P95 per arm, images per minute, NVML utilization
  of each arm's GPU, and the canary's verdict.

Servers (blue's GPU first in ``--gpus``, greens on the second; ``cpu`` and ``ort`` run their UNet
on the CPU):

  blue      fp16 + SDPA + channels-last, dynamic batching (max 8, 25 ms)   GPU 0
  fast      the same path                                                  GPU 1
  generic   fp32 + math attention (generic kernels), max batch 8           GPU 1
  generic1  the same, max batch 1 (fp32 math attention at 1024 px needs ~34 GiB per image)
  ort       UNet exported to ONNX, ONNX Runtime with CUDA requested: the image's CPU-only
            build binds the CPU EP (a real provider fallback)              GPU 1 + CPU
  cpu       everything on the CPU device                                   CPU

Workloads: ``512`` = 512 px / 25 steps, ``1024`` = 1024 px / 50 steps, ``512s5`` = 512 px /
5 steps (for the CPU-speed paths, labelled). Rollout cases: ``fast``, ``fast-swapped`` (the two
fast servers with their roles and GPUs swapped), ``generic``, ``generic-canary`` (admission's
same-path check off, so the canary's gate must catch it), ``ort``, ``cpu``.

Run on the GPU machine (device tool), e.g.::

    python bench/gpu_validation.py --out $OUT --rollouts fast,fast-swapped,generic
    python bench/gpu_validation.py --out $OUT --table fast:512:16,generic:512:16:200:60

``--smoke`` swaps every server for the tiny model on the CPU (``--cases`` and cells unchanged)
to check the harness without a GPU. Results: ``gpu_validation.json``, ``gpu_validation.md``
and ``artifacts.tar.gz`` (reports, canary records, server logs) in ``--out``; the JSON and the
Markdown are rewritten after every case, so a run cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from rollout.demo import sd_server_binary, server_ready
from rollout.local.haproxy import start_haproxy
from rollout.local.processes import ManagedProcess, free_port, start_process, wait_until

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--model", "sd15-arch", "--device", "cuda", "--dtype", "fp16", "--attention", "sdpa",
        "--channels-last", "--max-batch", "8", "--max-wait-ms", "25"]
SLOW_START = ["--allow-degraded", "--default-steps", "2"]  # a CPU-speed self-test in seconds
SERVERS: dict[str, tuple[list[str], str]] = {  # flags after FAST, which GPU ("blue"/"green")
    "blue": ([], "blue"),
    "fast": ([], "green"),
    "generic": (["--dtype", "fp32", "--attention", "math"], "green"),
    "generic1": (["--dtype", "fp32", "--attention", "math", "--max-batch", "1"], "green"),
    "ort": (["--dtype", "fp32", "--unet-backend", "onnxruntime", "--ort-providers",
             "CUDAExecutionProvider,CPUExecutionProvider", "--onnx-cache", "/tmp/onnx-cache",
             *SLOW_START], "green"),
    "cpu": (["--device", "cpu", "--dtype", "fp32", *SLOW_START], "green"),
}
# case -> (blue server, green server, admission's same-path check, expected phase)
CASES: dict[str, tuple[str, str, bool, str]] = {
    "fast": ("blue", "fast", True, "Promoted"),
    "fast-swapped": ("fast", "blue", True, "Promoted"),
    "generic": ("blue", "generic", True, "RolledBack"),
    "generic-canary": ("blue", "generic", False, "RolledBack"),
    "ort": ("blue", "ort", True, "RolledBack"),
    "cpu": ("blue", "cpu", True, "RolledBack"),
    # a green fleet (targets.green.urls) with one replica on the generic path: the canary's
    # per-instance judge must roll back and name that replica (admission's path check off)
    "fleet": ("blue", "fast+generic", False, "RolledBack"),
}


def case_servers(case: str) -> tuple[str, ...]:
    """The servers a rollout case uses: its blue, then its greens (``a+b`` is a fleet)."""
    blue, green, _, _ = CASES[case]
    return (blue, *green.split("+"))


SMOKE_MAX_RATIO = 1.5

WORKLOADS: dict[str, tuple[int, int]] = {"512": (512, 25), "1024": (1024, 50), "512s5": (512, 5)}


@dataclass(frozen=True)
class Cell:
    """One ``rollout canary`` run of the table."""

    path: str
    workload: str
    concurrency: int
    budget: int = 400
    deadline_s: float = 60.0

    @classmethod
    def parse(cls, text: str) -> Cell:
        parts = text.split(":")
        if len(parts) < 3 or parts[0] not in SERVERS or parts[1] not in WORKLOADS:
            raise SystemExit(f"bad cell {text!r}: path:workload:concurrency[:budget[:deadline]] "
                             f"with path in {sorted(SERVERS)} and workload in {sorted(WORKLOADS)}")
        return cls(parts[0], parts[1], int(parts[2]),
                   *([int(parts[3])] if len(parts) > 3 else []),
                   *([float(parts[4])] if len(parts) > 4 else []))


class Harness:
    """Servers, output files and the results so far."""

    def __init__(self, out: Path, gpus: list[str], smoke: bool) -> None:
        self.out, self.smoke = out, smoke
        self.work = Path("/tmp/gpu_validation")
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.gpu = {"blue": gpus[0], "green": gpus[-1]}
        self.servers: dict[str, tuple[ManagedProcess, str]] = {}
        self.results: dict[str, Any] = {"rollouts": [], "table": [], "started": {}}
        self.lock = threading.Lock()  # servers start in threads while results are saved

    # -- servers ---------------------------------------------------------------------------

    def flags(self, name: str) -> list[str]:
        extra, _ = SERVERS[name]
        if self.smoke:  # the tiny model on the CPU, same roles
            base = ["--model", "tiny", "--device", "cpu", "--threads", "1", "--max-batch", "8",
                    "--max-wait-ms", "25"]
            keep = [f for f in extra if f in ("--attention", "math", "--max-batch", "1")]
            return base + keep + (["--allow-degraded"] if name in ("ort", "cpu") else [])
        return FAST + extra

    def start(self, names: list[str]) -> None:
        """Start the servers in parallel (model building is CPU-bound and independent)."""
        errors: list[str] = []

        def one(name: str) -> None:
            port = free_port()
            t0 = time.monotonic()
            gpu = self.gpu[SERVERS[name][1]]
            proc = start_process(f"sd-{name}", [sd_server_binary(), *self.flags(name), "--host",
                                               "127.0.0.1", "--port", str(port)],
                                 env={"CUDA_VISIBLE_DEVICES": gpu},
                                 log=self.work / "logs" / f"sd-{name}.log")
            url = f"http://127.0.0.1:{port}"
            try:
                wait_until(partial(server_ready, url), timeout=420, what=name, proc=proc.proc,
                           log=proc.log)
            except Exception as e:  # the case that needs it reports the failure
                errors.append(f"{name}: {e}")
                proc.stop()
                return
            with self.lock:
                self.servers[name] = (proc, url)
                self.results["started"][name] = {"seconds": round(time.monotonic() - t0, 1),
                                                 "gpu": gpu, "flags": self.flags(name)}
            print(f"started {name} on GPU {gpu} in {time.monotonic() - t0:.0f} s", flush=True)

        threads = [threading.Thread(target=one, args=(n,)) for n in names if n not in
                   self.servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for e in errors:
            print(f"server failed to start: {e[-2000:]}", flush=True)

    def stop(self, name: str) -> None:
        with self.lock:
            proc = self.servers.pop(name, None)
        if proc is not None:
            proc[0].stop()

    def drain(self, timeout_s: float = 150.0) -> float:
        """Wait until no server has queued or running work; returns the seconds waited.

        A canary stopped by its deadline or decision leaves its running batches on the servers
        (sd-server drops a departed client's *queued* job, not a running batch), which would
        slow the next cell's first requests on that GPU."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            busy = 0.0
            for _, url in list(self.servers.values()):
                try:
                    text = httpx.get(f"{url}/metrics", timeout=5).text
                except httpx.HTTPError:
                    continue
                for line in text.splitlines():
                    if line.startswith(("sd_queue_depth ", "sd_in_flight_requests ")):
                        busy += float(line.split()[-1])
            if not busy:
                break
            time.sleep(0.5)
        return round(time.monotonic() - t0, 1)

    def keep(self, name: str, res: subprocess.CompletedProcess[str]) -> dict[str, Any]:
        """Keep a CLI run's stderr as ``logs/NAME.log``; return its JSON output ({} if none)."""
        (self.work / "logs").mkdir(exist_ok=True)
        (self.work / "logs" / f"{name}.log").write_text(res.stderr)
        out = res.stdout
        return json.loads(out[out.index("{"):]) if "{" in out else {}

    def gpu_of(self, name: str) -> str:
        return "cpu" if name == "cpu" else self.gpu[SERVERS[name][1]]

    # -- output ----------------------------------------------------------------------------

    def save(self) -> None:
        card = "CPU (smoke run)" if self.smoke else subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, check=False).stdout.strip()
        with self.lock:
            self.results["gpus"] = card.splitlines()
            (self.out / "gpu_validation.json").write_text(json.dumps(self.results, indent=2))
            (self.out / "gpu_validation.md").write_text(markdown(self.results))
            self.pack()

    def pack(self) -> None:
        """Reports, records and logs so far (rewritten after every case: a cut run keeps them)."""
        with tarfile.open(self.out / "artifacts.tar.gz", "w:gz") as tar:
            for sub in sorted(self.work.iterdir()):
                tar.add(sub, arcname=sub.name,
                        filter=lambda ti: None if ti.name.endswith((".sock", ".db-wal", ".db-shm",
                                                                   ".lock")) else ti)


def prompts_for(workload: str, work: Path, smoke: bool) -> Path:
    """The shipped SD 1.5 prompt set at the workload's size and steps."""
    size, steps = WORKLOADS[workload]
    if smoke:
        size, steps = 64, 4
    doc = yaml.safe_load((ROOT / "policies/prompts/sd15-512.yaml").read_text())
    doc["name"] = f"sd15-{workload}"
    doc["defaults"].update(width=size, height=size, steps=steps)
    path = work / f"prompts-{workload}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# -- rollouts -----------------------------------------------------------------------------


def rollout_policy(urls: dict[str, list[str]], router: dict[str, Any], same_path: bool,
                   prompts: Path, budget: int, concurrency: int,
                   max_ratio: float = 1.1) -> dict[str, Any]:
    return {
        "apiVersion": "rollout-gates.dev/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": "gpu"},
        "spec": {
            "targets": {c: {"type": "url", "urls": u} for c, u in urls.items()},
            "router": router,
            "steps": [{"weight": 0}],  # blue-green: judge green at 0%, then switch all
            "canary": {"prompts": str(prompts), "maxRequests": budget,
                       "concurrency": concurrency, "bluePerGreen": 1, "warmupRequests": 4,
                       "timeoutSeconds": 120, "deadlineSeconds": 240},
            "admission": {"samePathAsBlue": same_path},
            "gates": [{"type": "latency", "name": "p95", "maxRatio": max_ratio, "alpha": 0.01},
                      {"type": "error-rate", "name": "errors", "maxRate": 0.02}],
            "rollback": {"onInconclusive": "rollback"},
        },
    }


def canary_requests(history: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in history:
        canary = (row.get("evidence") or {}).get("canary") or {}
        for arm, n in (canary.get("requests") or {}).items():
            out[arm] = out.get(arm, 0) + int(n)
    return out


def rollout(h: Harness, case: str, budget: int, concurrency: int) -> dict[str, Any]:
    blue, green, same_path, expected = CASES[case]
    row: dict[str, Any] = {"case": case, "expected": expected, "blue": blue, "green": green,
                           "blue_gpu": h.gpu_of(blue),
                           "green_gpu": h.gpu_of(case_servers(case)[1]),
                           "same_path_check": same_path}
    if any(name not in h.servers for name in case_servers(case)):
        return {**row, "phase": None, "reason": "server did not start (see its log)"}
    urls = {"blue": [h.servers[blue][1]],
            "green": [h.servers[name][1] for name in green.split("+")]}
    row["green_urls"] = urls["green"]
    hap, router = None, {"type": "none"}
    if shutil.which("haproxy") and len(urls["green"]) == 1:  # its backend holds one per colour
        hap, sock = start_haproxy(h.work / f"haproxy-{case}", frontend_port=free_port(),
                                  blue=urls["blue"][0].removeprefix("http://"),
                                  green=urls["green"][0].removeprefix("http://"))
        router = {"type": "haproxy", "socket": str(sock)}
    policy = h.work / f"policy-{case}.yaml"
    # Smoke runs put both servers and the client on the same few CPU cores: whichever server
    # shares a core with the client is slower by the scheduler's choice, a difference the socket
    # clock measures faithfully. The GPU run keeps the 10% margin it validates.
    policy.write_text(yaml.safe_dump(rollout_policy(
        urls, router, same_path, prompts_for("512", h.work, h.smoke), budget, concurrency,
        max_ratio=SMOKE_MAX_RATIO if h.smoke else 1.1)))
    state = h.work / f"state-{case}"
    cli = [sys.executable, "-m", "rollout.cli"]
    t0 = time.monotonic()
    try:
        res = subprocess.run([*cli, "promote", str(policy), "--state-dir", str(state),
                              "--output", "json"], capture_output=True, text=True, timeout=420,
                             check=False)
    finally:
        seconds = time.monotonic() - t0
        if hap is not None:
            hap.stop()
    doc = h.keep(f"promote-{case}", res)
    hist = subprocess.run([*cli, "history", "gpu", "--state-dir", str(state), "--output", "json"],
                          capture_output=True, text=True, check=False).stdout
    history = json.loads(hist) if hist.strip().startswith("[") else []
    report = subprocess.run([*cli, "report", "gpu", "--state-dir", str(state), "--out",
                             str(h.work / f"report-{case}.html")],
                            capture_output=True, text=True, check=False)
    return {**row, "exit": res.returncode, "phase": doc.get("phase"), "reason": doc.get("reason"),
            "verdicts": doc.get("verdicts"), "weights": doc.get("weights"),
            "instances": doc.get("instances"),
            "router": router["type"], "seconds": round(seconds, 1),
            "canary_requests": canary_requests(history),
            "report": f"report-{case}.html" if report.returncode == 0 else report.stderr[-500:]}


# -- the canary table ---------------------------------------------------------------------


def utilization(samples: Any, gpu: str, smoke: bool) -> dict[str, float] | None:
    """Mean, and min of 2 s means over the middle 80% of the window, of one GPU."""
    if smoke or gpu == "cpu" or samples.error is not None:
        return None
    series = next((g for i, g in enumerate(samples.gpus) if str(i) == gpu), None)
    if series is None or not series.utilization_pct:
        return None
    u = np.asarray(series.utilization_pct, dtype=np.float64)
    cut = u[len(u) // 10: len(u) - len(u) // 10] if len(u) >= 20 else u
    windows = [cut[i:i + 10].mean() for i in range(0, max(1, len(cut) - 9), 10)]
    return {"mean_pct": round(float(cut.mean()), 1), "min_2s_pct": round(float(min(windows)), 1),
            "samples": int(u.size)}


def cell(h: Harness, c: Cell) -> dict[str, Any]:
    row: dict[str, Any] = {"path": c.path, "workload": c.workload, "size_steps":
                           WORKLOADS[c.workload], "concurrency": c.concurrency,
                           "budget": c.budget, "deadline_s": c.deadline_s,
                           "green_gpu": h.gpu_of(c.path), "blue_gpu": h.gpu_of("blue")}
    if c.path not in h.servers or "blue" not in h.servers:
        return {**row, "verdict": None, "reason": "server did not start (see its log)"}
    row["drained_s"] = h.drain()
    name = f"{c.path}-{c.workload}-c{c.concurrency}"
    records = h.work / f"records-{name}"
    sampler = None
    if not h.smoke:
        from gates.utilization import NvmlSampler

        sampler = NvmlSampler(interval_s=0.2)
        sampler.start()
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "rollout.cli", "canary", "--blue", h.servers["blue"][1],
         "--green", h.servers[c.path][1], "--prompts", str(prompts_for(c.workload, h.work,
                                                                       h.smoke)),
         "--concurrency", str(c.concurrency), "--max-requests", str(c.budget),
         "--warmup", "1" if c.budget > 8 else "0", "--timeout", "900",
         "--deadline", str(c.deadline_s), "--quantile", "0.95", "--max-ratio", "1.1",
         "--records", str(records), "--output", "json"],
        capture_output=True, text=True, timeout=c.deadline_s + 120, check=False)
    seconds = time.monotonic() - t0
    samples = sampler.stop() if sampler is not None else None
    doc = h.keep(f"canary-{name}", res)
    arms = {}
    for arm in ("blue", "green"):
        s = doc.get(arm) or {}
        arms[arm] = {"n": s.get("n"), "p50_s": s.get("p50"), "p95_s": s.get("p95"),
                     "errors": s.get("errors")}
    return {**row, "exit": res.returncode, "verdict": doc.get("verdict"),
            "stopped_by": doc.get("stopped_by"), "reason": doc.get("reason"),
            "elapsed_s": round(seconds, 1), "arms": arms,
            "green_images_per_min": round(60 * (arms["green"]["n"] or 0) / seconds, 2),
            "util": {arm: utilization(samples, h.gpu_of(srv), h.smoke) if samples else None
                     for arm, srv in (("blue", "blue"), ("green", c.path))}}


# -- report ---------------------------------------------------------------------------------


def _f(v: Any, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(r: dict[str, Any]) -> str:
    lines = [f"GPUs: {'; '.join(r.get('gpus', []))}", ""]
    if r["rollouts"]:
        lines += ["| case | blue -> green (GPU) | expected | phase | seconds | canary requests "
                  "green/blue | router | reason |", "|---|---|---|---|---|---|---|---|"]
        for x in r["rollouts"]:
            req = x.get("canary_requests") or {}
            lines.append(
                f"| {x['case']} | {x['blue']} ({x['blue_gpu']}) -> {x['green']} "
                f"({x['green_gpu']}) | {x['expected']} | **{x.get('phase')}** | "
                f"{x.get('seconds', '-')} | {req.get('green', 0)}/{req.get('blue', 0)} | "
                f"{x.get('router', '-')} | {(x.get('reason') or '')[:300]} |")
        lines.append("")
    if r["table"]:
        lines += ["| green path | px/steps | conc. | green n | green P50 / P95 s | blue n | "
                  "blue P50 / P95 s | green img/min | green GPU util mean / min2s % | blue GPU "
                  "util mean % | verdict (stopped by) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for x in r["table"]:
            a = x.get("arms") or {"green": {}, "blue": {}}
            g, b = a["green"], a["blue"]
            ug, ub = (x.get("util") or {}).get("green"), (x.get("util") or {}).get("blue")
            lines.append(
                f"| {x['path']} | {x['size_steps'][0]}/{x['size_steps'][1]} | "
                f"{x['concurrency']} | {g.get('n', '-')} | {_f(g.get('p50_s'))} / "
                f"{_f(g.get('p95_s'))} | {b.get('n', '-')} | {_f(b.get('p50_s'))} / "
                f"{_f(b.get('p95_s'))} | {_f(x.get('green_images_per_min'), '.1f')} | "
                f"{_f(ug and ug['mean_pct'], '.0f')} / {_f(ug and ug['min_2s_pct'], '.0f')} | "
                f"{_f(ub and ub['mean_pct'], '.0f')} | {x.get('verdict')} "
                f"({x.get('stopped_by')}) |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gpus", default="0,1", help="blue's GPU, greens' GPU")
    ap.add_argument("--rollouts", default="", help=f"cases, from {', '.join(CASES)}")
    ap.add_argument("--table", default="", help="cells path:workload:concurrency[:budget[:s]]")
    ap.add_argument("--budget", type=int, default=500, help="rollouts: canary slices")
    ap.add_argument("--concurrency", type=int, default=8, help="rollouts: requests per arm")
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU: harness only")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`: still save and pack
    cases = [c for c in a.rollouts.split(",") if c]
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"unknown case {c!r}: one of {', '.join(CASES)}")
    cells = [Cell.parse(t) for t in a.table.split(",") if t]
    a.out.mkdir(parents=True, exist_ok=True)
    h = Harness(a.out, a.gpus.split(","), a.smoke)
    needed = {s for c in cases for s in case_servers(c)} | {"blue"} | {c.path for c in cells}
    last_use: dict[str, int] = {}
    order = [case_servers(c) for c in cases] + [("blue", c.path) for c in cells]
    for i, pair in enumerate(order):
        for s in pair:
            last_use[s] = i
    # CPU-path servers take minutes to start (ONNX export, CPU self-test): start them in the
    # background and wait for them only where a case needs them.
    slow = sorted(needed & {"ort", "cpu"})
    late = threading.Thread(target=h.start, args=(slow,))
    try:
        late.start()
        h.start(sorted(needed - set(slow)))
        h.save()
        step = 0
        for c in cases:
            if set(case_servers(c)) & set(slow):
                late.join()
            h.results["rollouts"].append(rollout(h, c, a.budget, a.concurrency))
            print(json.dumps(h.results["rollouts"][-1]), flush=True)
            h.save()
            step += 1
            _stop_unused(h, last_use, step)
        for c in cells:
            if c.path in slow:
                late.join()
            h.results["table"].append(cell(h, c))
            print(json.dumps(h.results["table"][-1]), flush=True)
            h.save()
            step += 1
            _stop_unused(h, last_use, step)
    finally:
        late.join()
        for name in list(h.servers):
            h.stop(name)
        h.save()
    print(markdown(h.results))
    ok = all(x.get("phase") == x["expected"] for x in h.results["rollouts"])
    return 0 if ok else 1


def _stop_unused(h: Harness, last_use: dict[str, int], step: int) -> None:
    """Stop servers no later step uses: a stopped server's GPU memory is free for the next."""
    for name, last in last_use.items():
        if last < step:
            h.stop(name)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
