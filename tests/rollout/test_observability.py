"""Controller metrics (checked by ``promtool``), the /metrics endpoint, JSON logs, and observer
isolation, on real rollouts through the Controller and a SQLite store."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import Router

from gates.verdict import Verdict
from rollout.controller import Controller
from rollout.machine import GateResult, Observation, Plan, RolloutStatus
from rollout.observability import (
    ControllerMetrics,
    LogFormat,
    compose,
    configure_logging,
    log_transition,
    serve_metrics,
)
from rollout.store import StateStore


class Clock:
    """Advances by the scripted step on every analysis, so durations are known."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Analyzer:
    """Each action takes ``seconds`` on the clock and reports a canary like PolicyAnalyzer."""

    def __init__(self, clock: Clock, verdicts: list[Verdict], seconds: float) -> None:
        self.clock, self.verdicts, self.seconds = clock, iter(verdicts), seconds

    def _obs(self, canary: bool) -> Observation:
        self.clock.now += self.seconds
        evidence: dict[str, Any] = {}
        if canary:
            evidence["canary"] = {"requests": {"blue": 40, "green": 40}, "errors": {
                "blue": {"timeout": 0, "http_5xx": 0},
                "green": {"timeout": 1, "http_5xx": 3}}}
        return Observation(gates={"p95": GateResult(next(self.verdicts), "scripted"),
                                  "errors": GateResult(Verdict.PASS, "scripted")},
                           evidence=evidence)

    def admit(self, status: RolloutStatus) -> Observation:
        return self._obs(canary=False)

    def analyze(self, status: RolloutStatus, step: int) -> Observation:
        return self._obs(canary=True)

    def verify(self, status: RolloutStatus) -> Observation:
        return self._obs(canary=False)


def rollout(tmp: Path, verdicts: list[Verdict], *observers: Any, seconds: float = 7.0,
            clock: Clock | None = None, verify: bool = True) -> tuple[StateStore, RolloutStatus]:
    clock = clock or Clock()
    store = StateStore(tmp)
    status = RolloutStatus(name="shop", plan=Plan(weights=(0, 50), verify=verify))
    store.save(status, previous=None)
    ctl = Controller(store, Router(), Analyzer(clock, verdicts, seconds),
                     on_transition=compose(*observers))
    return store, ctl.run(status)


def samples(text: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\w+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


def test_metrics_of_a_promoted_rollout(tmp_path: Path) -> None:
    clock = Clock()
    metrics = ControllerMetrics(clock=clock)
    store, final = rollout(tmp_path, [Verdict.PASS] * 4, metrics, clock=clock)
    assert final.phase.value == "Promoted"
    s = samples(metrics.exposition())
    assert s['rollout_phase{rollout="shop",phase="Promoted"}'] == 1
    assert s['rollout_phase{rollout="shop",phase="Analyzing"}'] == 0
    assert s['rollout_traffic_weight_percent{rollout="shop",arm="green"}'] == 100
    transitions = store.history("shop")[1:]
    counted = {k: v for k, v in s.items() if k.startswith("rollout_transitions_total")}
    assert sum(counted.values()) == len(transitions)
    assert counted['rollout_transitions_total{rollout="shop",from="Analyzing",to="Shifting"}'] \
        == 1
    # admission + two analyses + verification, 4 p95 verdicts
    assert s['rollout_gate_decisions_total{rollout="shop",gate="p95",verdict="pass"}'] == 4
    assert s['rollout_analysis_duration_seconds_count{rollout="shop",phase="Analyzing"}'] == 2
    assert s['rollout_analysis_duration_seconds_sum{rollout="shop",phase="Analyzing"}'] == 14
    assert s['rollout_analysis_duration_seconds_bucket{rollout="shop",phase="Analyzing",'
             'le="5"}'] == 0
    assert s['rollout_analysis_duration_seconds_bucket{rollout="shop",phase="Analyzing",'
             'le="15"}'] == 2
    assert s['rollout_canary_requests_total{rollout="shop",arm="green",outcome="ok"}'] == 72
    assert s['rollout_canary_requests_total{rollout="shop",arm="green",outcome="http_5xx"}'] \
        == 6


def test_decisions_by_verdict_on_rollback(tmp_path: Path) -> None:
    metrics = ControllerMetrics()
    _, final = rollout(tmp_path, [Verdict.PASS, Verdict.FAIL], metrics)
    s = samples(metrics.exposition())
    assert final.phase.value == "RolledBack"
    assert s['rollout_gate_decisions_total{rollout="shop",gate="p95",verdict="fail"}'] == 1
    assert s['rollout_phase{rollout="shop",phase="RolledBack"}'] == 1


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool comes with Debian's prometheus package (make system-deps)")
def test_promtool_accepts_the_exposition(tmp_path: Path) -> None:
    metrics = ControllerMetrics()
    rollout(tmp_path / "a", [Verdict.PASS] * 4, metrics)
    rollout(tmp_path / "b", [Verdict.PASS, Verdict.FAIL], metrics)  # same name, second run
    res = subprocess.run(["promtool", "check", "metrics"], input=metrics.exposition(),
                         capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_label_values_are_escaped() -> None:
    metrics = ControllerMetrics()
    status = RolloutStatus(name="shop", plan=Plan(weights=(0,)))
    obs = Observation(gates={'we"ird\\gate\n': GateResult(Verdict.PASS, "")})
    metrics(status, status.model_copy(update={"generation": 1}), obs)
    assert 'gate="we\\"ird\\\\gate\\n"' in metrics.exposition()


@pytest.fixture
def server() -> Iterator[tuple[ControllerMetrics, str]]:
    metrics = ControllerMetrics()
    srv = serve_metrics(metrics, 0)
    try:
        yield metrics, f"http://127.0.0.1:{srv.port}"
    finally:
        srv.close()


def test_metrics_endpoint(server: tuple[ControllerMetrics, str], tmp_path: Path) -> None:
    metrics, url = server
    rollout(tmp_path, [Verdict.PASS, Verdict.FAIL], metrics)
    r = httpx.get(f"{url}/metrics", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'rollout_phase{rollout="shop",phase="RolledBack"} 1' in r.text
    assert httpx.get(f"{url}/", timeout=5).status_code == 404


def test_json_logs_carry_the_transition_fields(tmp_path: Path) -> None:
    stream = io.StringIO()
    handler = configure_logging(LogFormat.json, stream=stream)
    try:
        rollout(tmp_path, [Verdict.PASS, Verdict.FAIL], log_transition)
    finally:
        logging.getLogger("rollout").removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["from"], x["to"]) for x in lines][-2:] == [("Analyzing", "RollingBack"),
                                                          ("RollingBack", "RolledBack")]
    failed = lines[-2]
    assert failed["level"] == "info" and failed["logger"] == "rollout.controller"
    assert failed["rollout"] == "shop" and failed["gates"]["p95"]["verdict"] == "fail"
    assert failed["msg"].startswith("shop: Analyzing -> RollingBack: step 0 analysis fail")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", failed["ts"])


def test_text_logs_and_reconfiguring_replaces_the_handler() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.json, stream=io.StringIO())
    handler = configure_logging(LogFormat.text, stream=stream)
    try:
        logger = logging.getLogger("rollout")
        assert [h for h in logger.handlers if getattr(h, "_rollout_handler", False)] == [handler]
        logging.getLogger("rollout.x").info("hello %s", "there")
    finally:
        logging.getLogger("rollout").removeHandler(handler)
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO rollout.x: hello there\n", stream.getvalue())


def test_a_failing_observer_never_stops_the_rollout(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def broken(prev: RolloutStatus, nxt: RolloutStatus, obs: Observation) -> None:
        raise RuntimeError("observer bug")

    def after(prev: RolloutStatus, nxt: RolloutStatus, obs: Observation) -> None:
        seen.append(nxt.phase.value)

    with caplog.at_level(logging.ERROR, "rollout.controller"):
        _, final = rollout(tmp_path, [Verdict.PASS] * 4, broken, None, after)
    assert final.phase.value == "Promoted" and seen[-1] == "Promoted"
    assert "observer" in caplog.text and "observer bug" in caplog.text


def test_configure_serves_metrics_and_an_inner_call_keeps_the_options(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rollout import observability

    monkeypatch.setattr(observability, "_state",
                        {"log_format": None, "server": None, "metrics": None})
    assert observability.log_format() is LogFormat.text
    observability.configure(log_format=LogFormat.json, metrics_port=0)
    server = observability._state["server"]
    try:
        observability.configure()  # `rollout demo` running `rollout promote` in-process
        assert observability.log_format() is LogFormat.json
        assert observability._state["server"] is server
        rollout(tmp_path, [Verdict.PASS, Verdict.FAIL], observability.metrics())
        r = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
        assert 'rollout_phase{rollout="shop",phase="RolledBack"} 1' in r.text
    finally:
        server.close()
        configure_logging(LogFormat.text)
