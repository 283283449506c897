"""The analyzer: runs a policy's gates for the controller and turns them into an Observation.

One place composes the extension points, per phase:

* **Admitting**: green must be ready, must not report itself degraded (the reference server's
  own path checks: CUDA requested but on the CPU, ORT bound to the CPU EP, math attention where
  fused attention is required, ...), and every ``capability`` gate is checked against green's
  snapshot on *each* of its instances (one pod on a bad node is caught) and blue's snapshot for
  ``same-as-blue`` pins.
* **Analyzing(step)**: the seeded canary (``latency`` gates with ``source: canary`` and the
  ``error-rate`` gate) while the step's traffic flows, the utilization floor over the canary's
  window, then the live Prometheus gates over the same window.
* **Verifying**: a soak on full traffic judged by the live gates (and a canary if there are no
  live gates, since blue still runs until the scale-down delay).

Gates never crash the controller: every measurement problem becomes an ``error`` or
``nodata`` verdict with its reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gates.canary.prompts import PromptSetError, load_prompts
from gates.canary.runner import CanaryConfig, CanaryProgress, CanaryResult, run_canary_sync
from gates.capability import (
    CAPABILITIES_PATH,
    BaselineRequiredError,
    CapabilityRequirements,
    CapabilitySnapshot,
    SnapshotSourceError,
    check_capability,
    snapshot_from_document,
)
from gates.compare import summarize
from gates.error_rate import ErrorRateGateSpec
from gates.latency import LatencyGateSpec
from gates.utilization import PrometheusUtilization, UtilizationRequirements
from gates.utilization.floor import evaluate_utilization_floor
from gates.verdict import Verdict
from rollout.machine import GateResult, Observation, RolloutStatus
from rollout.metrics.prometheus import PrometheusClient, PrometheusProvider
from rollout.platforms.base import Platform
from rollout.policy.models import RolloutPolicy
from rollout.report import utilization_evidence

__all__ = ["PolicyAnalyzer", "path_of"]


class PolicyAnalyzer:
    """Implements :class:`rollout.controller.Analyzer` for one policy on one platform."""

    def __init__(self, policy: RolloutPolicy, platform: Platform, *, records_dir: Path,
                 on_canary_progress: Callable[[CanaryProgress], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.policy = policy
        self.spec = policy.spec
        self.platform = platform
        self.records_dir = records_dir
        self.on_canary_progress = on_canary_progress
        self.sleep = sleep
        prom = self.spec.metrics.prometheus
        self.prometheus = None if prom is None else PrometheusProvider(
            PrometheusClient(prom.url), stale_after_seconds=prom.stale_after_seconds,
            tolerance=prom.tolerance)

    # -- gates by kind ---------------------------------------------------------------------
    def _gates(self, kind: type[Any]) -> list[Any]:
        return [g for g in self.spec.gates if isinstance(g, kind)]

    @property
    def _canary_latency(self) -> list[LatencyGateSpec]:
        return [g for g in self._gates(LatencyGateSpec) if g.source == "canary"]

    # -- Admitting -------------------------------------------------------------------------
    def admit(self, status: RolloutStatus) -> Observation:
        """Readiness, self-reported degradation and capability gates of every green instance.

        Each instance's ``/capabilities`` is read once and every check judges that one read."""
        gates: dict[str, GateResult] = {}
        evidence: dict[str, Any] = {}
        green = self.platform.endpoints("green")
        if not green:
            return Observation(error="green has no serving instance")
        caps: list[CapabilityRequirements] = self._gates(CapabilityRequirements)
        same_path = self.spec.admission.same_path_as_blue
        with httpx.Client(timeout=10) as client:
            ready = {url: _read(client, url, "/readyz") for url in green}
            docs = {url: _read(client, url, CAPABILITIES_PATH) for url in green}
            blue: _Read | None = None
            if same_path or any(c.needs_blue() for c in caps):
                blue_urls = self.platform.endpoints("blue")
                blue = _read(client, blue_urls[0], CAPABILITIES_PATH) if blue_urls else \
                    _Read("blue", error="no serving instance")
        gates["green-ready"] = _self_report(ready, docs, evidence)
        if same_path and blue is not None:
            gates["execution-path"] = _same_path(blue, docs, evidence)
        if caps:
            blue_snapshot = None
            if blue is not None and any(c.needs_blue() for c in caps):
                try:
                    blue_snapshot = blue.snapshot()
                except SnapshotSourceError as e:
                    for c in caps:
                        gates[c.name] = GateResult(Verdict.ERROR, f"blue snapshot: {e}", 1)
                    return Observation(gates=gates, evidence=evidence)
            for cap in caps:
                gates[cap.name] = _capability(cap, docs, blue_snapshot, evidence)
        return Observation(gates=gates, evidence=evidence)

    # -- Analyzing -------------------------------------------------------------------------
    def analyze(self, status: RolloutStatus, step: int) -> Observation:
        """Canary (if the step runs one), utilization floor, live gates: one window."""
        spec_step = self.spec.steps[step]
        gates: dict[str, GateResult] = {}
        evidence: dict[str, Any] = {"step": step, "weight": spec_step.weight}
        t0 = time.time()
        if spec_step.pause_seconds:
            self.sleep(spec_step.pause_seconds)
        has_canary_gates = bool(self._canary_latency or self._gates(ErrorRateGateSpec))
        if spec_step.canary and has_canary_gates:
            gates.update(self._canary(status, f"step-{step}", evidence))
        t1 = time.time()
        gates.update(self._utilization(t0, t1, evidence))
        gates.update(self._live(max(t1 - t0, self._live_window())))
        return Observation(gates=gates, evidence=evidence)

    def verify(self, status: RolloutStatus) -> Observation:
        """Post-switch soak judged by live gates (a canary when there are none)."""
        evidence: dict[str, Any] = {"verify_seconds": self.spec.promotion.verify_seconds}
        t0 = time.time()
        self.sleep(self.spec.promotion.verify_seconds)
        window = max(time.time() - t0, self._live_window())
        # Blue takes no traffic after the switch: compare with its window just before it.
        gates = dict(self._live(window, blue_offset=window))
        if not gates:
            gates.update(self._canary(status, "verify", evidence))
        gates.update(self._utilization(t0, time.time(), evidence))
        return Observation(gates=gates, evidence=evidence)

    # -- pieces ----------------------------------------------------------------------------
    def _live_window(self) -> float:
        prom = self.spec.metrics.prometheus
        return prom.window_seconds if prom is not None else 0.0

    def _live(self, window: float, blue_offset: float = 0.0) -> Mapping[str, GateResult]:
        if self.prometheus is None:
            return {}
        return self.prometheus.evaluate(self.spec.gates, window_seconds=window,
                                        blue_offset_seconds=blue_offset)

    def _utilization(self, t0: float, t1: float,
                     evidence: dict[str, Any]) -> dict[str, GateResult]:
        out: dict[str, GateResult] = {}
        prom = self.spec.metrics.prometheus
        for gate in self._gates(UtilizationRequirements):
            if gate.source != "prometheus" or prom is None:
                out[gate.name] = GateResult(Verdict.NODATA, "the controller samples utilization "
                                            "through Prometheus (DCGM); set source: prometheus "
                                            "and spec.metrics.prometheus")
                continue
            samples = PrometheusUtilization(prom.url).query(
                gate.metric, start=t0, end=max(t1, t0 + 1), step_s=gate.interval_seconds,
                selector=gate.selector)
            res = evaluate_utilization_floor(gate, samples)
            evidence.setdefault("utilization", {})[gate.name] = utilization_evidence(
                gate, samples, res)
            out[gate.name] = GateResult(res.verdict, res.reason)
        return out

    def _canary(self, status: RolloutStatus, label: str,
                evidence: dict[str, Any]) -> dict[str, GateResult]:
        c = self.spec.canary
        names = [g.name for g in self._canary_latency] + \
            [g.name for g in self._gates(ErrorRateGateSpec)]
        try:
            prompts = load_prompts(c.prompts)
            blue, green = self.platform.endpoints("blue"), self.platform.endpoints("green")
            errors = self._gates(ErrorRateGateSpec)
            config = CanaryConfig(
                blue_url=blue[0], green_url=green[0], prompts=tuple(prompts.prompts), api=c.api,
                blue_per_green=c.blue_per_green, concurrency=c.concurrency,
                max_requests=c.max_requests, warmup_requests=c.warmup_requests,
                timeout_s=c.timeout_seconds, deadline_s=c.deadline_seconds, rate=c.rate,
                output_check=c.output_check,
                latency_gates=tuple(self._canary_latency),
                error_gate=errors[0] if errors else ErrorRateGateSpec())
        except (PromptSetError, ValueError, IndexError) as e:
            return {n: GateResult(Verdict.ERROR, f"canary not started: {e}", 1) for n in names}
        result = run_canary_sync(config, records_dir=self.records_dir / status.name / label,
                                 on_progress=self.on_canary_progress)
        evidence["canary"] = _canary_evidence(result)
        return {g.name: GateResult(g.verdict, g.reason) for g in result.gates}


def _canary_evidence(result: CanaryResult) -> dict[str, Any]:
    doc = result.to_dict()
    for arm, values in result.latencies.items():
        doc.setdefault("arms", {})[arm] = summarize(values, arm=arm).to_dict()
    return doc


@dataclass(frozen=True)
class _Read:
    """One GET of an instance's endpoint: the status and JSON body, or why it failed."""

    url: str = ""
    status: int = 0
    body: dict[str, Any] | None = None
    error: str | None = None

    def snapshot(self) -> CapabilitySnapshot:
        """The capability snapshot in a ``/capabilities`` body.

        Raises:
            SnapshotSourceError: the read failed, or the body holds no valid snapshot.
        """
        if self.error is not None:
            raise SnapshotSourceError(f"{self.url}: {self.error}")
        return snapshot_from_document(self.body, self.url)


def _read(client: httpx.Client, base: str, path: str) -> _Read:
    url = base.rstrip("/") + path
    try:
        response = client.get(url)
    except httpx.HTTPError as e:
        return _Read(url, error=f"{type(e).__name__}: {e}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if path == CAPABILITIES_PATH and (response.status_code != 200 or not isinstance(body, dict)):
        return _Read(url, response.status_code, error=f"HTTP {response.status_code}, "
                     f"{'not a JSON object' if not isinstance(body, dict) else 'an error'}")
    return _Read(url, response.status_code, body if isinstance(body, dict) else None)


def _self_report(ready: Mapping[str, _Read], docs: Mapping[str, _Read],
                 evidence: dict[str, Any]) -> GateResult:
    """Every green instance is ready and does not report a degraded execution path."""
    problems: list[str] = []
    pipelines: dict[str, Any] = {}
    for url, doc in docs.items():
        failed = ready[url].error or doc.error
        if failed or doc.body is None:
            problems.append(f"{url}: unreachable: {failed}")
            continue
        caps = doc.body
        pipelines[url] = caps.get("pipeline")
        if ready[url].status != 200:
            problems.append(f"{url}: not ready (HTTP {ready[url].status})")
        if caps.get("degraded"):
            found = "; ".join(
                f"[{v.get('check')}] {v.get('message')}" for v in caps.get("violations", [])
            ) or "no reason given"
            problems.append(f"{url}: serving on a degraded path: {found}")
        if caps.get("fault_injection", {}).get("active"):
            evidence.setdefault("fault_injection", {})[url] = caps["fault_injection"]
    evidence["green_pipeline"] = pipelines
    if problems:
        return GateResult(Verdict.FAIL, " | ".join(problems))
    return GateResult(Verdict.PASS, f"{len(docs)} green instance(s) ready on a verified path")


_PATH_FIELDS = ("backend", "device", "dtype", "attention", "attention_impl", "memory_format",
                "compiled")


def path_of(caps: dict[str, Any]) -> dict[str, Any]:
    """The execution-path facts of a server's /capabilities, per module (the report shows the
    same facts the ``execution-path`` check compares)."""
    pipeline = caps.get("pipeline") or {}
    facts = {f"{mod}.{k}": m.get(k) for mod, m in (pipeline.get("modules") or {}).items()
             for k in _PATH_FIELDS}
    ort = pipeline.get("ort") or {}
    if ort:
        facts["ort.bound"] = ort.get("bound")
    return facts


def _same_path(blue: _Read, green: Mapping[str, _Read],
               evidence: dict[str, Any]) -> GateResult:
    """Green runs the same kernels, precision and providers as blue, module by module.

    Why: drift of CUDA/cuDNN/TensorRT or a changed flag silently moves SD onto generic
    kernels (math attention, fp32) that pass every health probe.
    """
    failed = [f"{r.url}: {r.error}" for r in (blue, *green.values()) if r.body is None]
    if failed:
        return GateResult(Verdict.ERROR, f"cannot read /capabilities: {'; '.join(failed)}",
                          len(failed))
    blue_caps = blue.body or {}
    evidence["blue_pipeline"] = blue_caps.get("pipeline")
    ref = path_of(blue_caps)
    paths = {url: path_of(r.body or {}) for url, r in green.items()}
    if not ref:
        return GateResult(Verdict.NODATA, "blue's /capabilities reports no pipeline")
    diffs = [f"{url}: {k} {ref.get(k)!r} on blue, {v!r} on green"
             for url, facts in paths.items() for k, v in sorted(facts.items())
             if ref.get(k) != v]
    if diffs:
        return GateResult(Verdict.FAIL, "execution path differs from blue: " + "; ".join(diffs))
    return GateResult(Verdict.PASS, f"same execution path as blue ({len(ref)} facts)")


def _capability(cap: CapabilityRequirements, docs: Mapping[str, _Read],
                blue: CapabilitySnapshot | None, evidence: dict[str, Any]) -> GateResult:
    violations: list[str] = []
    for url, doc in docs.items():
        try:
            report = check_capability(cap, doc.snapshot(), blue=blue)
        except SnapshotSourceError as e:  # names the endpoint already
            return GateResult(Verdict.ERROR, str(e), 1)
        except BaselineRequiredError as e:
            return GateResult(Verdict.ERROR, f"{url}: {e}", 1)
        evidence.setdefault("capability", {})[url] = [
            v.model_dump(mode="json") for v in report.violations]
        violations += [f"{url}: [{v.check}] {v.message}" for v in report.violations]
    if violations:
        return GateResult(Verdict.FAIL, "; ".join(violations))
    return GateResult(Verdict.PASS, f"{len(docs)} green instance(s) meet the requirements")


