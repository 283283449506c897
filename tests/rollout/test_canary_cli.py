"""``rollout canary`` end to end against loopback servers, and its files fed to
``rollout compare`` (through a local typer app until the lead registers the command)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from fakes import url_policy
from typer.testing import CliRunner

from gates.canary.loopback import LoopbackBehaviour, LoopbackServer
from rollout.cli import canary, compare
from rollout.platforms.local import LocalPlatform

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "policies" / "prompts" / "tiny-64.yaml")

app = typer.Typer()
canary.register(app)
compare.register(app)
runner = CliRunner()


@pytest.fixture
def servers(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    blue_b, green_b = request.param
    with LoopbackServer(blue_b) as blue, LoopbackServer(green_b) as green:
        yield blue.url, green.url


def invoke(*args: str) -> tuple[int, dict[str, Any]]:
    r = runner.invoke(app, list(args))
    return r.exit_code, json.loads(r.stdout) if r.stdout.startswith("{") else {}


def canary_json(blue: str, green: str, *extra: str) -> tuple[int, dict[str, Any]]:
    return invoke("canary", "--blue", blue, "--green", green, "--prompts", TINY,
                  "--warmup", "1", "--output", "json", *extra)


def compare_json(records: Path, k: int = 1) -> tuple[int, dict[str, Any]]:
    return invoke("compare", "--blue", str(records / "blue.jsonl"), "--green",
                  str(records / "green.jsonl"), "--blue-per-green", str(k), "--output", "json")


# Jitter makes the two identical servers exchangeable (see gates.canary.loopback).
SAME = (LoopbackBehaviour(service_s=0.004, jitter_s=0.01, seed=1),
        LoopbackBehaviour(service_s=0.004, jitter_s=0.01, seed=2))
SLOW = (LoopbackBehaviour(service_s=0.004), LoopbackBehaviour(service_s=0.03))
FAILING = (LoopbackBehaviour(service_s=0.004), LoopbackBehaviour(service_s=0.004, status=500))


@pytest.mark.parametrize("servers", [SAME], indirect=True)
def test_identical_arms_never_fail_and_compare_agrees(servers: tuple[str, str],
                                                      tmp_path: Path) -> None:
    code, doc = canary_json(*servers, "--max-requests", "60", "--concurrency", "4",
                            "--blue-per-green", "2", "--max-error-rate", "0.05",
                            "--records", str(tmp_path))
    assert code in (0, 3) and doc["verdict"] in ("pass", "inconclusive")
    assert doc["requests"]["green"] == doc["slices"]["judged"] <= 60
    assert doc["requests"]["blue"] == 2 * doc["requests"]["green"]
    assert doc["errors"]["green"] == dict.fromkeys(
        ("timeout", "connect", "http_4xx", "http_5xx", "bad_payload"), 0)
    assert doc["green"]["n"] == doc["requests"]["green"] and doc["green"]["p95"] > 0
    assert doc["output_check"]["identical"] == doc["slices"]["judged"]
    latency = next(g for g in doc["gates"] if g["type"] == "latency")
    c_code, c_doc = compare_json(tmp_path, k=2)
    assert c_doc["verdict"] == latency["verdict"] and c_code in (0, 3)
    assert c_doc["green"]["n"] == doc["green"]["n"]


@pytest.mark.parametrize("servers", [SLOW], indirect=True)
def test_slower_green_fails_early_and_compare_agrees(servers: tuple[str, str],
                                                     tmp_path: Path) -> None:
    code, doc = canary_json(*servers, "--max-requests", "200", "--concurrency", "2",
                            "--records", str(tmp_path))
    assert code == 1 and doc["verdict"] == "fail" and doc["stopped_by"] == "decided"
    assert doc["slices"]["sent"] < 40
    c_code, c_doc = compare_json(tmp_path)
    assert (c_code, c_doc["verdict"]) == (1, "fail")
    latency = next(g for g in doc["gates"] if g["type"] == "latency")
    assert c_doc["decided_at"] == latency["decided_at"]


@pytest.mark.parametrize("servers", [FAILING], indirect=True)
def test_green_answering_500s_fails_on_error_rate(servers: tuple[str, str]) -> None:
    code, doc = canary_json(*servers, "--max-requests", "100", "--concurrency", "2")
    assert code == 1
    gates = {g["type"]: g for g in doc["gates"]}
    assert gates["error-rate"]["verdict"] == "fail"
    assert doc["errors"]["green"]["http_5xx"] == doc["requests"]["green"] <= 5
    assert gates["latency"]["verdict"] == "nodata"  # no complete slice, never a pass


@pytest.mark.parametrize("servers", [SAME], indirect=True)
def test_policy_settings_and_text_output_with_progress(servers: tuple[str, str],
                                                       tmp_path: Path) -> None:
    blue, green = servers
    policy = tmp_path / "p.yaml"
    policy.write_text(url_policy("t", blue, green, f"""
  steps: [{{weight: 0}}]
  canary: {{prompts: "{TINY}", api: a1111, maxRequests: 12, concurrency: 3,
           warmupRequests: 0, timeoutSeconds: 5}}
  gates:
    - {{type: latency, name: p90, quantile: 0.9}}
    - {{type: error-rate, maxRate: 0.2, minRequests: 5}}
"""))
    r = runner.invoke(app, ["canary", "--policy", str(policy), "--progress",
                            "--records", str(tmp_path / "rec")])
    assert r.exit_code == 3, r.output  # 12 slices cannot promote on latency
    assert "verdict: INCONCLUSIVE" in r.stdout and "stopped by budget" in r.stdout
    assert "gate p90 (latency)" in r.stdout and "--quantile 0.9" in r.stdout
    assert "\r[" in r.stderr and "12/12 slices" in r.stderr
    sent = (tmp_path / "rec" / "requests.jsonl").read_text().splitlines()
    assert len(sent) == 24 and all(json.loads(x)["ok"] for x in sent)


@pytest.mark.parametrize("args", [
    ("--concurrency", "2", "--rate", "3"),
    ("--header", "no-colon"),
    ("--prompts", "/nonexistent.yaml"),
])
def test_bad_input_exits_2(args: tuple[str, ...]) -> None:
    code, doc = invoke("canary", "--blue", "http://127.0.0.1:9", "--green",
                       "http://127.0.0.1:9", "--output", "json", *args)
    assert code == 2 and doc["verdict"] == "error"


def test_missing_targets_exit_2() -> None:
    r = runner.invoke(app, ["canary", "--green", "http://127.0.0.1:9", "--prompts", TINY])
    assert r.exit_code == 2 and "--blue and --green" in r.stderr


def test_policy_canary_is_the_analyzers_canary(tmp_path: Path) -> None:
    """``rollout canary --policy P`` builds the very CanaryConfig the analyzer builds: rate,
    outputCheck and only the ``source: canary`` latency gates (it used to drop all three)."""
    import inspect

    from rollout.analysis import PolicyAnalyzer
    from rollout.policy.loader import load_policy

    prompts = Path(__file__).resolve().parents[2] / "policies/prompts/tiny-64.yaml"
    path = tmp_path / "policy.yaml"
    path.write_text(url_policy("same", "http://127.0.0.1:18001", "http://127.0.0.1:18002", f"""
  steps: [{{weight: 50}}]
  canary:
    prompts: "{prompts}"
    rate: 3.5
    bluePerGreen: 2
    outputCheck: {{mode: distance, maxDistance: 0.05}}
  metrics: {{prometheus: {{url: "http://127.0.0.1:9090"}}}}
  limits: {{canaryMaxBytes: 2097152}}
  gates:
    - {{type: latency, name: p95, maxRatio: 1.2}}
    - {{type: latency, name: live-p95, source: prometheus}}
    - {{type: error-rate, maxRate: 0.02}}
"""), encoding="utf-8")
    policy = load_policy(path)

    analyzer = PolicyAnalyzer(policy, LocalPlatform(policy, log_dir=tmp_path),
                              records_dir=tmp_path)
    flags = {n: p.default for n, p in inspect.signature(canary.canary_command).parameters.items()}
    from_cli = canary._build_config({**flags, "policy": path})
    assert from_cli == analyzer.canary_config()
    assert from_cli.rate == 3.5 and from_cli.output_check.mode == "distance"
    assert [g.name for g in from_cli.latency_gates] == ["p95"]
    assert from_cli.error_gate.max_rate == 0.02 and from_cli.max_body_bytes == 2097152
