"""The canary against misbehaving real reference servers (tiny model, CPU, the server's
documented fault injection): a green answering 500s fails on its error rate; a green that never
answers fails on timeouts, and a hard deadline ends the run on time whatever the timeouts.

Needs the reference server (``deploy/sd-server``); without it these tests are skipped with the
reason, never counted as passing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sdserver_harness import Server, start_server

from gates.canary.prompts import load_prompts
from gates.canary.runner import CanaryConfig, run_canary_sync
from gates.error_rate import ErrorRateGateSpec
from gates.verdict import Verdict

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "policies" / "prompts" / "tiny-64.yaml"

BASE = ("--max-batch", "1", "--max-wait-ms", "0")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """A healthy blue; a green failing every request; a green whose every batch stalls."""
    logs = tmp_path_factory.mktemp("sd-servers")
    args = {"blue": BASE,
            "failing": (*BASE, "--fault-error-rate", "1"),
            "stalled": (*BASE, "--fault-stall-rate", "1", "--fault-stall-seconds", "600")}
    with ThreadPoolExecutor(len(args)) as pool:
        started = dict(zip(args, pool.map(lambda k: start_server(args[k], logs / f"{k}.log"),
                                          args), strict=True))
    yield started
    started["stalled"].proc.kill()  # its inference thread sleeps: a graceful stop would wait
    for s in started.values():
        s.stop()


def config(blue: Server, green: Server, **kw: object) -> CanaryConfig:
    base: dict[str, object] = {
        "blue_url": blue.url, "green_url": green.url,
        "prompts": tuple(load_prompts(TINY).prompts), "concurrency": 2, "warmup_requests": 1,
        "max_requests": 200, "error_gate": ErrorRateGateSpec(max_rate=0.05)}
    return CanaryConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_a_green_answering_500s_fails_on_its_error_rate(servers: dict[str, Server]) -> None:
    r = run_canary_sync(config(servers["blue"], servers["failing"], timeout_s=30,
                               deadline_s=60))
    gates = {g.kind: g for g in r.gates}
    assert r.verdict is Verdict.FAIL and r.stopped_by == "decided"
    assert gates["error-rate"].verdict is Verdict.FAIL
    assert gates["latency"].verdict is Verdict.NODATA  # no complete slice: never a pass
    assert r.errors["green"]["http_5xx"] == r.requests["green"] <= 5
    assert sum(r.errors["blue"].values()) == 0


def test_a_green_that_never_answers_times_out_and_fails_within_the_deadline(
        servers: dict[str, Server]) -> None:
    t0 = time.monotonic()
    r = run_canary_sync(config(servers["blue"], servers["stalled"], timeout_s=1.0,
                               deadline_s=15))
    took = time.monotonic() - t0
    assert r.verdict is Verdict.FAIL and r.stopped_by == "decided", r.reason
    assert r.errors["green"]["timeout"] >= 3
    assert next(g for g in r.gates if g.kind == "error-rate").verdict is Verdict.FAIL
    assert took < 15


def test_the_deadline_ends_the_run_on_time_whatever_the_timeout(
        servers: dict[str, Server]) -> None:
    t0 = time.monotonic()
    r = run_canary_sync(config(servers["blue"], servers["stalled"], timeout_s=300,
                               deadline_s=3))
    took = time.monotonic() - t0
    assert 3 <= took < 5
    assert r.stopped_by == "deadline" and r.verdict is Verdict.NODATA
    assert r.slices["sent"] == 0  # the green warm-up request never came back
