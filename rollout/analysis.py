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
``nodata`` verdict with its reason. Every read of another service's answer is bounded
(``spec.limits``, :mod:`gates.bounded`): one deadline per exchange and a cap on the body, so a
green that trickles or floods its ``/capabilities`` is an ``error`` verdict, never a hang.

An analysis can be interrupted: ``should_stop`` (the controller's view of a pending abort or
rollback) is asked between admission reads, every :data:`_STOP_POLL_S` of a soak
(``pauseSeconds``, ``verifySeconds``), by the canary after each slice and every 0.25 s, and
between the stages of an analysis. Once it gives a reason the phase's method returns at once
with ``Observation(error="analysis interrupted: <reason>")`` and whatever gates and evidence
were measured until then.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gates.bounded import BoundedReadError, read_bounded
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
from rollout.policy.models import LimitsSpec, RolloutPolicy
from rollout.report import utilization_evidence

__all__ = ["PolicyAnalyzer", "path_of"]

#: A soak (``pauseSeconds``, ``verifySeconds``) sleeps in steps of at most this, asking
#: ``should_stop`` between them.
_STOP_POLL_S = 0.25


class _Interrupted(Exception):  # noqa: N818 - control flow, not an error
    """``should_stop`` gave a reason: the phase's method returns an interrupted Observation."""


class PolicyAnalyzer:
    """Implements :class:`rollout.controller.Analyzer` for one policy on one platform.

    Args:
        policy: the rollout's policy (gates, canary settings, ``spec.limits``).
        platform: where blue and green serve.
        records_dir: canary records go under ``records_dir / rollout name / label``.
        on_canary_progress: live canary progress (throttled by the runner).
        sleep: the soaks' sleep (tests pass a fake clock's).
        should_stop: returns why the running analysis must stop now (``"abort requested by
            user"``) or ``None``; ``None`` (the default) never stops one. See the module
            docstring for where it is asked; keep it quick (the canary asks it from its event
            loop).
    """

    def __init__(self, policy: RolloutPolicy, platform: Platform, *, records_dir: Path,
                 on_canary_progress: Callable[[CanaryProgress], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 should_stop: Callable[[], str | None] | None = None) -> None:
        self.policy = policy
        self.spec = policy.spec
        self.limits: LimitsSpec = policy.spec.limits
        self.platform = platform
        self.records_dir = records_dir
        self.on_canary_progress = on_canary_progress
        self.sleep = sleep
        self.should_stop = should_stop
        self._stop_reason: str | None = None
        prom = self.spec.metrics.prometheus
        self.prometheus = None if prom is None else PrometheusProvider(
            PrometheusClient(prom.url, timeout=self.limits.exchange_seconds,
                             max_bytes=self.limits.prometheus_max_bytes),
            stale_after_seconds=prom.stale_after_seconds, tolerance=prom.tolerance)

    # -- interruption ----------------------------------------------------------------------
    def _stopping(self) -> str | None:
        """``should_stop``'s reason, remembered for the Observation (the canary asks this)."""
        if self._stop_reason is None and self.should_stop is not None:
            self._stop_reason = self.should_stop() or None
        return self._stop_reason

    def _check(self) -> None:
        """Raise :class:`_Interrupted` if the analysis must stop."""
        if self._stopping() is not None:
            raise _Interrupted

    def _soak(self, seconds: float) -> None:
        """Sleep ``seconds``, in steps of :data:`_STOP_POLL_S` that ask ``should_stop``.

        The steps are counted, not timed, so a fake ``sleep`` stays in control of the clock.
        """
        if self.should_stop is None:
            if seconds > 0:
                self.sleep(seconds)
            return
        left = seconds
        while left > 0:
            self._check()
            step = min(_STOP_POLL_S, left)
            self.sleep(step)
            left -= step
        self._check()

    def _interrupted(self, gates: Mapping[str, GateResult],
                     evidence: dict[str, Any]) -> Observation:
        evidence["interrupted"] = self._stop_reason
        return Observation(error=f"analysis interrupted: {self._stop_reason}",
                           gates=dict(gates), evidence=evidence)

    def _read(self, client: httpx.Client, base: str, path: str) -> _Read:
        return _read(client, base, path, self.limits)

    # -- gates by kind ---------------------------------------------------------------------
    def _gates(self, kind: type[Any]) -> list[Any]:
        return [g for g in self.spec.gates if isinstance(g, kind)]

    @property
    def _canary_latency(self) -> list[LatencyGateSpec]:
        return [g for g in self._gates(LatencyGateSpec) if g.source == "canary"]

    # -- Admitting -------------------------------------------------------------------------
    def admit(self, status: RolloutStatus) -> Observation:
        """Readiness, self-reported degradation and capability gates of every green instance.

        Each instance's ``/capabilities`` is read once and every check judges that one read;
        each read is bounded by ``spec.limits`` (a broken bound is that read's error)."""
        self._stop_reason = None
        gates: dict[str, GateResult] = {}
        evidence: dict[str, Any] = {}
        try:
            self._check()
            green = self.platform.endpoints("green")
            if not green:
                return Observation(error="green has no serving instance")
            caps: list[CapabilityRequirements] = self._gates(CapabilityRequirements)
            same_path = self.spec.admission.same_path_as_blue
            ready: dict[str, _Read] = {}
            docs: dict[str, _Read] = {}
            blue: _Read | None = None
            with httpx.Client() as client:
                for url in green:
                    self._check()
                    ready[url] = self._read(client, url, "/readyz")
                for url in green:
                    self._check()
                    docs[url] = self._read(client, url, CAPABILITIES_PATH)
                if same_path or any(c.needs_blue() for c in caps):
                    self._check()
                    blue_urls = self.platform.endpoints("blue")
                    blue = self._read(client, blue_urls[0], CAPABILITIES_PATH) if blue_urls \
                        else _Read("blue", error="no serving instance")
        except _Interrupted:
            return self._interrupted(gates, evidence)
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
        self._stop_reason = None
        spec_step = self.spec.steps[step]
        gates: dict[str, GateResult] = {}
        evidence: dict[str, Any] = {"step": step, "weight": spec_step.weight}
        try:
            t0 = time.time()
            self._soak(spec_step.pause_seconds)
            has_canary_gates = bool(self._canary_latency or self._gates(ErrorRateGateSpec))
            if spec_step.canary and has_canary_gates:
                gates.update(self._canary(status, f"step-{step}", evidence))
            t1 = time.time()
            self._check()
            gates.update(self._utilization(t0, t1, evidence))
            self._check()
            gates.update(self._live(max(t1 - t0, self._live_window())))
        except _Interrupted:
            return self._interrupted(gates, evidence)
        return Observation(gates=gates, evidence=evidence)

    def verify(self, status: RolloutStatus) -> Observation:
        """Post-switch soak judged by live gates (a canary when there are none)."""
        self._stop_reason = None
        evidence: dict[str, Any] = {"verify_seconds": self.spec.promotion.verify_seconds}
        gates: dict[str, GateResult] = {}
        try:
            t0 = time.time()
            self._soak(self.spec.promotion.verify_seconds)
            window = max(time.time() - t0, self._live_window())
            # Blue takes no traffic after the switch: compare with its window just before it.
            gates.update(self._live(window, blue_offset=window))
            if not gates:
                gates.update(self._canary(status, "verify", evidence))
            self._check()
            gates.update(self._utilization(t0, time.time(), evidence))
        except _Interrupted:
            return self._interrupted(gates, evidence)
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
            source = PrometheusUtilization(prom.url, timeout_s=self.limits.exchange_seconds,
                                           max_bytes=self.limits.prometheus_max_bytes)
            try:
                samples = source.query(gate.metric, start=t0, end=max(t1, t0 + 1),
                                       step_s=gate.interval_seconds, selector=gate.selector)
            finally:
                source.close()
            res = evaluate_utilization_floor(gate, samples)
            evidence.setdefault("utilization", {})[gate.name] = utilization_evidence(
                gate, samples, res)
            out[gate.name] = GateResult(res.verdict, res.reason)
        return out

    def _canary(self, status: RolloutStatus, label: str,
                evidence: dict[str, Any]) -> dict[str, GateResult]:
        """The canary's gate results (also of a run ``should_stop`` cancelled: the caller's
        next :meth:`_check` then interrupts the analysis)."""
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
                output_check=c.output_check, max_body_bytes=self.limits.canary_max_bytes,
                latency_gates=tuple(self._canary_latency),
                error_gate=errors[0] if errors else ErrorRateGateSpec())
        except (PromptSetError, ValueError, IndexError) as e:
            return {n: GateResult(Verdict.ERROR, f"canary not started: {e}", 1) for n in names}
        result = run_canary_sync(config, records_dir=self.records_dir / status.name / label,
                                 on_progress=self.on_canary_progress,
                                 should_stop=None if self.should_stop is None else self._stopping)
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


def _read(client: httpx.Client, base: str, path: str, limits: LimitsSpec) -> _Read:
    """``GET base+path`` within ``limits.exchangeSeconds`` and ``limits.capabilitiesMaxBytes``;
    any failure (a broken bound included) is the read's ``error``, with its reason."""
    url = base.rstrip("/") + path
    try:
        response = read_bounded(client, client.build_request("GET", url),
                                deadline_s=limits.exchange_seconds,
                                max_bytes=limits.capabilities_max_bytes)
    except BoundedReadError as e:  # says which bound (the URL prefixes every _Read error)
        return _Read(url, e.status_code or 0, error=str(e).removeprefix(f"{e.url}: "))
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
        failed = ready[url] if ready[url].error else doc
        if failed.error or doc.body is None:
            problems.append(f"{failed.url or url}: unreachable: {failed.error}")
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


