"""Cost as work grows: the controller with 1, 10 and 50 rollouts at once, and the HTML report
at 10^3, 10^4 and 10^5 requests.

**Rollouts.** Each rollout is the real composition (:func:`rollout.engine.build` on the local
platform: file store, controller, policy analyzer with its real canary, evidence writer,
metrics, baselines) with the ``none`` router, against one blue and one green loopback server
(:mod:`gates.canary.loopback`, fixed service time) in their own processes, so the CPU and
memory measured here are the controller's alone. All rollouts run at once, one thread each, in
one process (what the in-cluster controller does with its rollouts). Admission is scripted to
pass (the loopback server has no ``/readyz`` or ``/capabilities``); every step after it is the
real one. Reported per level:

* CPU seconds per rollout: the process's user+system time over the run, divided by N;
* peak RSS per rollout: (peak RSS during the run - RSS before it) / N, and the peak itself;
* decision latency: for every transition, the time from the analyzer handing back its
  observation (or the start of a non-analysis action) to the transition being persisted and
  observed (decide, store write, evidence, metrics), P50/P99/max over all transitions;
* wall time of the whole level.

**Report.** Synthetic canary records (two arms, lognormal latencies, one slice = one blue and
one green request) written with the canary's own :class:`gates.canary.records.RecordWriter`,
then :func:`rollout.report.load_records` and :func:`rollout.report.render_report` timed, and the
HTML's size.

    .venv/bin/python bench/controller_scaling.py   # writes bench/results/controller_scaling.md
    .venv/bin/python bench/controller_scaling.py --rollouts 1 2 --requests 100 \\
        --canary-requests 8 --out /tmp/x.md        # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from gates.canary.loopback import loopback_process
from gates.canary.records import ARMS, RecordWriter, RequestRecord
from gates.verdict import Verdict
from rollout.engine import Callbacks, begin, build
from rollout.machine import GateResult, Observation, RolloutStatus
from rollout.policy.models import RolloutPolicy
from rollout.report import load_records, render_report

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = str(ROOT / "policies" / "prompts" / "tiny-64.yaml")


def policy(name: str, blue: str, green: str, canary_requests: int) -> RolloutPolicy:
    """One canary step at 0% weight, then promotion: the rollout's whole life, with the
    latency (maxRatio 2, so equal stubs decide within the budget) and error-rate gates."""
    return RolloutPolicy.model_validate({
        "apiVersion": "rollout-gates.dev/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": name},
        "spec": {
            "platform": "local",
            "targets": {"blue": {"type": "url", "url": blue},
                        "green": {"type": "url", "url": green}},
            "router": {"type": "none"},
            "steps": [{"weight": 0}],
            "canary": {"prompts": PROMPTS, "maxRequests": canary_requests, "concurrency": 2,
                       "warmupRequests": 1, "timeoutSeconds": 10, "deadlineSeconds": 300},
            "gates": [{"type": "latency", "name": "p95", "maxRatio": 2.0},
                      {"type": "error-rate", "name": "errors", "maxRate": 0.05}],
            "admission": {"samePathAsBlue": False},
        }})


class TimedAnalyzer:
    """The engine's analyzer with admission scripted to pass and every return time-stamped,
    so a transition's decision latency starts when its observation is handed back."""

    def __init__(self, real: Any, marks: dict[str, float], name: str) -> None:
        self.real, self.marks, self.name = real, marks, name

    def _mark(self, obs: Observation) -> Observation:
        self.marks[self.name] = time.perf_counter()
        return obs

    def admit(self, status: RolloutStatus) -> Observation:
        return self._mark(Observation(gates={"green-ready": GateResult(
            Verdict.PASS, "scripted: loopback stubs have no /readyz")}))

    def analyze(self, status: RolloutStatus, step: int) -> Observation:
        return self._mark(self.real.analyze(status, step))

    def verify(self, status: RolloutStatus) -> Observation:
        return self._mark(self.real.verify(status))


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_rollouts(n: int, blue: str, green: str, canary_requests: int,
                 state: Path) -> dict[str, Any]:
    """``n`` rollouts at once, one thread each; their costs and decision latencies."""
    marks: dict[str, float] = {}
    decisions: list[float] = []
    finals: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        name = f"r{n}-{i}"

        def on_transition(prev: RolloutStatus, new: RolloutStatus, obs: Observation) -> None:
            now = time.perf_counter()
            with lock:
                decisions.append(now - marks[name])
                marks[name] = now  # a next transition without analysis counts from here

        state_dir = state / name
        engine = build(policy(name, blue, green, canary_requests), state_dir=state_dir,
                       callbacks=Callbacks(log=lambda _m: None, on_transition=on_transition))
        engine.controller.analyzer = TimedAnalyzer(engine.controller.analyzer, marks, name)
        with engine.store.lock(name):
            status = begin(engine, None, ready_timeout=0.01, log=lambda _m: None)
            marks[name] = time.perf_counter()
            final = engine.run(status)
        with lock:
            finals.append(final.phase.value)

    rss0, cpu0, t0 = _rss_kib(), _cpu_s(), time.perf_counter()
    peak = rss0
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, _rss_kib())
        time.sleep(0.05)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    d = np.array(decisions) * 1e3
    return {"rollouts": n, "finished": len(finals),
            "phases": ", ".join(f"{p} {finals.count(p)}" for p in sorted(set(finals))),
            "wall_s": wall, "cpu_s_per_rollout": cpu / n,
            "rss_mib_per_rollout": (peak - rss0) / 1024 / n, "peak_rss_mib": peak / 1024,
            "transitions": int(d.size),
            "decision_p50_ms": float(np.percentile(d, 50)) if d.size else float("nan"),
            "decision_p99_ms": float(np.percentile(d, 99)) if d.size else float("nan"),
            "decision_max_ms": float(d.max()) if d.size else float("nan")}


def synthetic_records(directory: Path, requests: int, seed: int = 0) -> None:
    """``requests`` canary records (half per arm, in slices) as a real canary writes them."""
    rng = np.random.default_rng(seed)
    slices = max(1, requests // 2)
    lat = rng.lognormal(np.log(0.5), 0.1, size=(slices, 2))
    lat[:, 1] *= 1.02  # green a little slower, so the judge has something to judge
    with RecordWriter(directory) as w:
        for s in range(slices):
            w.write([RequestRecord(slice=s, arm=arm, replica=0, order=2 * s + k,
                                   prompt_id=f"p{s % 8}", seed=s, start=0.25 * s,
                                   latency_s=float(lat[s, k]), status=200, ok=True)
                     for k, arm in enumerate(ARMS)])


def report_cost(requests: int, tmp: Path) -> dict[str, Any]:
    """Build time (load + render) and size of the HTML report over ``requests`` records."""
    d = tmp / f"records-{requests}"
    synthetic_records(d, requests)
    t0 = time.perf_counter()
    data = load_records(d)
    t1 = time.perf_counter()
    html = render_report(data, now=0.0)
    t2 = time.perf_counter()
    return {"requests": requests, "load_s": t1 - t0, "render_s": t2 - t1, "total_s": t2 - t0,
            "html_kib": len(html.encode()) / 1024}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rollouts", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--canary-requests", type=int, default=200,
                   help="canary slice budget of each rollout (it stops once decided)")
    p.add_argument("--service-ms", type=float, default=10.0)
    p.add_argument("--requests", type=int, nargs="+", default=[10**3, 10**4, 10**5])
    p.add_argument("--out", type=Path,
                   default=ROOT / "bench" / "results" / "controller_scaling.md")
    a = p.parse_args(argv)
    logging.disable(logging.WARNING)  # 50 controllers' progress lines are not the result
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, loopback_process(a.service_ms, 1) as blue, \
            loopback_process(a.service_ms, 1) as green:
        # warm-up: imports and first-use caches are not charged to the first level
        run_rollouts(1, blue, green, a.canary_requests, Path(tmp, "warm-up"))
        levels = [run_rollouts(n, blue, green, a.canary_requests, Path(tmp, f"n{n}"))
                  for n in a.rollouts]
        report_cost(min(a.requests), Path(tmp, "warm-up"))  # first render's one-off costs
        reports = [report_cost(n, Path(tmp)) for n in a.requests]
    write(a, levels, reports, load_before)


def write(a: argparse.Namespace, levels: list[dict[str, Any]], reports: list[dict[str, Any]],
          load_before: float) -> None:
    lines = [
        "# Cost as work grows (bench/controller_scaling.py)", "",
        f"## {time.strftime('%Y-%m-%d %H:%M %Z')}", "",
        f"### Controller: N rollouts at once (local platform, `none` router, loopback stubs at "
        f"{a.service_ms:g} ms, one canary step of at most {a.canary_requests} slices, then "
        f"promotion)", "",
        "| rollouts | finished (phases) | wall s | CPU s / rollout | RSS MiB / rollout | "
        "peak RSS MiB | transitions | decision P50 ms | decision P99 ms | decision max ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {r['rollouts']} | {r['finished']} ({r['phases']}) | {r['wall_s']:.1f} | "
          f"{r['cpu_s_per_rollout']:.3f} | {r['rss_mib_per_rollout']:.2f} | "
          f"{r['peak_rss_mib']:.1f} | {r['transitions']} | {r['decision_p50_ms']:.2f} | "
          f"{r['decision_p99_ms']:.2f} | {r['decision_max_ms']:.2f} |" for r in levels),
        "",
        "CPU and RSS are the controller process's (stub servers run in their own processes, "
        "shared by all rollouts); admission is scripted to pass, every other step is the real "
        "one, canary included. RSS per rollout = (peak - RSS before the level) / N. Decision "
        "latency: observation handed back (or the previous transition, for actions without "
        "analysis) -> transition persisted and observed (store, evidence, metrics, baselines).",
        "",
        "### HTML report over synthetic canary records", "",
        "| requests | load_records s | render_report s | total s | HTML KiB |",
        "|---:|---:|---:|---:|---:|",
        *(f"| {r['requests']} | {r['load_s']:.3f} | {r['render_s']:.3f} | {r['total_s']:.3f} | "
          f"{r['html_kib']:.0f} |" for r in reports),
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; 1-minute load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after (shared machine).",
        "",
    ]
    a.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
