"""Blue-green rollouts on real GPUs: does the controller promote the fast path and roll back
the degraded ones, and how many canary requests and seconds does each decision take?

Blue is SD 1.5's architecture (``sd15-arch``, random weights) on the fast path (fp16, SDPA,
channels-last, dynamic batching) on one GPU; each green case runs on another GPU (or the same
one when only one is visible) and ``rollout promote`` judges it with the shipped 512 px /
25-step prompt set. Traffic goes through HAProxy when its binary runs here, else the ``none``
router (analysis only) is used and said so in the results.

Cases:
  fast            green = blue's path                              -> should be promoted
  generic         fp32 + math attention (generic kernels)         -> admission (path differs)
  generic-canary  the same green, path check off                  -> the canary's P95 gate

Run on the GPU machine (device tool), e.g.::

    python bench/gpu_rollouts.py --out $OUT --gpus 0,1

It writes ``gpu_rollouts.json`` and ``gpu_rollouts.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from rollout.demo import sd_server_binary, server_ready
from rollout.local.haproxy import start_haproxy
from rollout.local.processes import ManagedProcess, free_port, start_process, wait_until

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--model", "sd15-arch", "--device", "cuda", "--dtype", "fp16", "--attention", "sdpa",
        "--channels-last", "--max-batch", "8", "--max-wait-ms", "25", "--host", "127.0.0.1"]
CASES: dict[str, tuple[list[str], bool]] = {  # green flags, same-path admission check
    "fast": ([], True),
    "generic": (["--dtype", "fp32", "--attention", "math"], True),
    "generic-canary": (["--dtype", "fp32", "--attention", "math"], False),
}


def _policy(urls: dict[str, str], router: dict[str, Any], same_path: bool,
            max_requests: int, concurrency: int) -> dict[str, Any]:
    return {
        "apiVersion": "rollout-gates.dev/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": "gpu"},
        "spec": {
            "targets": {c: {"type": "url", "url": u} for c, u in urls.items()},
            "router": router,
            "steps": [{"weight": 0}, {"weight": 100, "canary": False}],
            "canary": {"prompts": os.environ.get("GPU_ROLLOUTS_PROMPTS",
                                                 str(ROOT / "policies/prompts/sd15-512.yaml")),
                       "maxRequests": max_requests, "concurrency": concurrency, "bluePerGreen": 1,
                       "warmupRequests": 4, "timeoutSeconds": 120, "deadlineSeconds": 240},
            "admission": {"samePathAsBlue": same_path},
            "gates": [{"type": "latency", "name": "p95", "maxRatio": 1.1, "alpha": 0.01},
                      {"type": "error-rate", "name": "errors", "maxRate": 0.02}],
            "rollback": {"onInconclusive": "rollback"},
        },
    }


def _start(name: str, args: list[str], gpu: str, port: int, logs: Path) -> ManagedProcess:
    proc = start_process(name, [sd_server_binary(), *args, "--port", str(port)],
                         env={"CUDA_VISIBLE_DEVICES": gpu}, log=logs / f"{name}.log")
    wait_until(partial(server_ready, f"http://127.0.0.1:{port}"), timeout=300, what=name,
               proc=proc.proc, log=proc.log)
    return proc


def _canary_requests(history: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in history:
        canary = (row.get("evidence") or {}).get("canary") or {}
        for arm, n in (canary.get("requests") or {}).items():
            out[arm] = out.get(arm, 0) + int(n)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gpus", default="0,1", help="blue's GPU, green's GPU")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--max-requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=8, help="canary slices in flight")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny model on the CPU with the tiny prompt set: checks the harness only")
    a = ap.parse_args()
    if a.smoke:
        FAST[:6] = ["--model", "tiny", "--device", "cpu", "--threads", "1"]
        os.environ["GPU_ROLLOUTS_PROMPTS"] = str(ROOT / "policies/prompts/tiny-64.yaml")
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/gpu_rollouts")
    shutil.rmtree(work, ignore_errors=True)
    gpus = a.gpus.split(",")
    blue_gpu, green_gpu = gpus[0], gpus[-1]
    ports = {c: free_port() for c in ("blue", "green", "front")}
    urls = {c: f"http://127.0.0.1:{ports[c]}" for c in ("blue", "green")}
    results: list[dict[str, Any]] = []
    procs: list[ManagedProcess] = []
    router: dict[str, Any] = {"type": "none"}
    try:
        procs.append(_start("sd-blue", FAST, blue_gpu, ports["blue"], work))
        for case in a.cases.split(","):
            flags, same_path = CASES[case]
            green = _start(f"sd-green-{case}", FAST + flags, green_gpu, ports["green"], work)
            hap = None
            if shutil.which("haproxy"):
                hap, sock = start_haproxy(work / f"haproxy-{case}", frontend_port=ports["front"],
                                          blue=f"127.0.0.1:{ports['blue']}",
                                          green=f"127.0.0.1:{ports['green']}")
                router = {"type": "haproxy", "socket": str(sock)}
            policy = work / f"{case}.yaml"
            policy.write_text(yaml.safe_dump(_policy(urls, router, same_path, a.max_requests,
                                                    a.concurrency)))
            state = work / f"state-{case}"
            t0 = time.monotonic()
            res = subprocess.run([sys.executable, "-m", "rollout.cli", "promote", str(policy),
                                  "--state-dir", str(state), "--output", "json"],
                                 capture_output=True, text=True, timeout=420, check=False)
            seconds = time.monotonic() - t0
            (out / "promote.log").open("a").write(f"== {case}\n{res.stderr[-6000:]}\n")
            doc = json.loads(res.stdout[res.stdout.index("{"):]) if "{" in res.stdout else {}
            hist = subprocess.run([sys.executable, "-m", "rollout.cli", "history", "gpu",
                                   "--state-dir", str(state), "--output", "json"],
                                  capture_output=True, text=True, check=False).stdout
            history = json.loads(hist) if hist.strip().startswith("[") else []
            results.append({"case": case, "green_flags": flags, "same_path_check": same_path,
                            "exit": res.returncode, "phase": doc.get("phase"),
                            "reason": doc.get("reason"), "verdicts": doc.get("verdicts"),
                            "weights": doc.get("weights"), "router": router["type"],
                            "seconds": round(seconds, 1),
                            "canary_requests": _canary_requests(history)})
            print(json.dumps(results[-1]), flush=True)
            if hap is not None:
                hap.stop()
            green.stop()
    finally:
        for p in procs:
            p.stop()
    card = "CPU (smoke run)\n" if a.smoke else subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
        capture_output=True, text=True, check=False).stdout
    (out / "gpu_rollouts.json").write_text(json.dumps(
        {"gpus": card.strip().splitlines(), "blue_gpu": blue_gpu, "green_gpu": green_gpu,
         "blue_flags": FAST, "results": results}, indent=2))
    lines = [f"GPUs: {'; '.join(card.strip().splitlines())} (blue on {blue_gpu}, green on "
             f"{green_gpu})", "",
             "| green case | expected | phase | exit | seconds | canary requests (green/blue) "
             "| reason |", "|---|---|---|---|---|---|---|"]
    for r in results:
        req = r["canary_requests"]
        lines.append(f"| {r['case']} | {'Promoted' if r['case'] == 'fast' else 'RolledBack'} | "
                     f"{r['phase']} | {r['exit']} | {r['seconds']} | {req.get('green', 0)}/"
                     f"{req.get('blue', 0)} | {(r['reason'] or '')[:160]} |")
    (out / "gpu_rollouts.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    ok = all((r["phase"] == "Promoted") == (r["case"] == "fast") for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
