"""The analyzer: runs a policy's gates for the controller and turns them into an Observation.

One place composes the extension points, per phase:

* **Admitting**: green must be ready, must not report itself degraded (the reference server's
  own path checks: CUDA requested but on the CPU, ORT bound to the CPU EP, math attention where
  fused attention is required, ...), and every ``capability`` gate is checked against green's
  snapshot on *each* of its instances (one pod on a bad node is caught) and blue's snapshot for
  ``same-as-blue`` pins (the reads and checks: :mod:`rollout.admission`).
* **Analyzing(step)**: the seeded canary (``latency`` gates with ``source: canary`` and the
  ``error-rate`` gate) while the step's traffic flows, the utilization floor over the canary's
  window, then the live Prometheus gates over the same window. The canary spreads its slices
  over every serving instance of each colour (``Platform.instances``: pod and node where the
  platform knows them) and judges each green instance against blue's pool as well
  (:mod:`gates.stats.fleet`); what each instance served is the evidence's ``instances`` list
  (``arm, url, pod, node, n, p50, p95, errors, verdict``), which the controller copies into a
  RolloutPolicy's ``status.instances``. A prompt set kept in a ConfigMap
  (``canary.prompts.configMapRef``) is read through the platform when the canary starts.
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from gates.canary.prompts import Prompt, PromptSetError, parse_prompts
from gates.canary.records import ARMS
from gates.canary.runner import CanaryConfig, CanaryProgress, CanaryResult, run_canary_sync
from gates.capability import CAPABILITIES_PATH
from gates.compare import summarize
from gates.gate import GateResult
from gates.prometheus import PrometheusClient
from gates.registry import canary_gates, capability_gates, utilization_gates
from gates.utilization import PrometheusUtilization
from gates.utilization.floor import evaluate_utilization_floor
from gates.verdict import Verdict
from rollout.admission import InstanceRead, admission_gates, read_endpoint
from rollout.errors import RolloutError
from rollout.machine import Observation, RolloutStatus
from rollout.metrics.base import MetricProvider
from rollout.metrics.prometheus import DEFAULT_CONSECUTIVE_ERROR_LIMIT, PrometheusProvider
from rollout.platforms.base import Platform
from rollout.policy.models import ConfigMapPrompts, LimitsSpec, RolloutPolicy
from rollout.report import utilization_evidence

__all__ = ["PolicyAnalyzer"]

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
        consecutive_error_limit: measurement errors in a row a live gate retries before its
            verdict is ``error`` (Argo Rollouts' ``consecutiveErrorLimit``).
    """

    def __init__(self, policy: RolloutPolicy, platform: Platform, *, records_dir: Path,
                 on_canary_progress: Callable[[CanaryProgress], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 should_stop: Callable[[], str | None] | None = None,
                 consecutive_error_limit: int = DEFAULT_CONSECUTIVE_ERROR_LIMIT) -> None:
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
        self.prometheus: MetricProvider | None = None if prom is None else PrometheusProvider(
            PrometheusClient(prom.url, timeout=self.limits.exchange_seconds,
                             max_bytes=self.limits.prometheus_max_bytes),
            stale_after_seconds=prom.stale_after_seconds,
            consecutive_error_limit=consecutive_error_limit, sleep=self._soak)

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
        """What was measured until the stop, kept; but a cut-short step proves nothing, so a
        gate that passed on the slices it saw (the output check's validity) says inconclusive."""
        evidence["interrupted"] = self._stop_reason
        kept = {name: replace(g, verdict=Verdict.INCONCLUSIVE,
                              reason=f"interrupted before the step ended; so far: {g.reason}")
                if g.verdict is Verdict.PASS else g for name, g in gates.items()}
        return Observation(error=f"analysis interrupted: {self._stop_reason}",
                           gates=kept, evidence=evidence)

    def _read(self, client: httpx.Client, base: str, path: str) -> InstanceRead:
        return read_endpoint(client, base, path, self.limits)

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
            caps = capability_gates(self.spec.gates)
            same_path = self.spec.admission.same_path_as_blue
            ready: dict[str, InstanceRead] = {}
            docs: dict[str, InstanceRead] = {}
            blue: InstanceRead | None = None
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
                        else InstanceRead("blue", error="no serving instance")
        except _Interrupted:
            return self._interrupted(gates, evidence)
        gates.update(admission_gates(ready, docs, blue, caps, same_path_as_blue=same_path,
                                     evidence=evidence, matrix=self.spec.matrix,
                                     platform=self.platform,
                                     engine_manifest=self.spec.admission.engine_manifest,
                                     image=self.spec.image))
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
            if spec_step.canary and canary_gates(self.spec.gates).names:
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
        for gate in utilization_gates(self.spec.gates):
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
            out[gate.name] = GateResult(res.verdict, res.reason,
                                        samples=sum(len(g.utilization_pct) for g in samples.gpus))
        return out

    def canary_config(self) -> CanaryConfig:
        """The canary of this policy against every serving instance of each colour.

        Raises:
            PromptSetError, ValueError: prompts (a ConfigMap's included) or a value.
            RolloutError: the platform could not list the instances or read the ConfigMap.
        """
        fleet = {arm: self.platform.instances(arm) for arm in ARMS}
        return CanaryConfig.from_spec(self.spec.canary, self.spec.gates, fleet=fleet,
                                      max_body_bytes=self.limits.canary_max_bytes,
                                      prompts=self._cluster_prompts())

    def _cluster_prompts(self) -> list[Prompt] | None:
        """The prompts of a ConfigMap-held set (read now, through the platform), or ``None``
        when the policy names or holds its set itself."""
        ref = self.spec.canary.prompts
        if not isinstance(ref, ConfigMapPrompts):
            return None
        cm = ref.config_map_ref
        text = self.platform.config_map_text(cm.name, cm.key)
        return parse_prompts(text, f"ConfigMap {cm.name} key {cm.key}").prompts

    def _canary(self, status: RolloutStatus, label: str,
                evidence: dict[str, Any]) -> dict[str, GateResult]:
        """The canary's gate results (also of a run ``should_stop`` cancelled: the caller's
        next :meth:`_check` then interrupts the analysis)."""
        names = canary_gates(self.spec.gates).names
        try:
            config = self.canary_config()
        except (PromptSetError, ValueError, RolloutError) as e:
            return {n: GateResult(Verdict.ERROR, f"canary not started: {e}", 1) for n in names}
        result = run_canary_sync(config, records_dir=self.records_dir / status.name / label,
                                 on_progress=self.on_canary_progress,
                                 should_stop=None if self.should_stop is None else self._stopping)
        evidence["canary"] = _canary_evidence(result)  # holds each gate's evidence already
        evidence["instances"] = evidence["canary"]["instances"]  # the contract's place
        return {g.name: replace(g, evidence={}) for g in result.gates}


def _canary_evidence(result: CanaryResult) -> dict[str, Any]:
    doc = result.to_dict()
    for arm, values in result.latencies.items():
        doc.setdefault("arms", {})[arm] = summarize(values, arm=arm).to_dict()
    return doc
