"""``rollout canary`` against fleets: ``--blue``/``--green`` repeatable (or a policy's
``targets.<colour>.urls``), per-instance evidence in ``--output json``, and a green instance
that alone is slower failing the run by name.

Loopback servers for the quick cases; three real ``sd-server --model tiny`` greens for the slow
path, one of them on a real slow path: fp16 on a CPU (no fast half-precision kernels there,
about ten times the work of fp32), the dtype drift of a node whose GPU went missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import url_policy
from fleet import loopback_fleet, sd_fleet
from typer.testing import CliRunner

from gates.canary.loopback import LoopbackBehaviour
from rollout.cli import app

runner = CliRunner()
FAST = LoopbackBehaviour(service_s=0.01, jitter_s=0.004)
SLOW = LoopbackBehaviour(service_s=0.025, jitter_s=0.004)


def canary(*args: str) -> tuple[int, dict[str, Any]]:
    r = runner.invoke(app, ["canary", "--prompts", "tiny-64", "--warmup", "1",
                            "--output", "json", *args])
    return r.exit_code, json.loads(r.stdout) if r.stdout.startswith("{") else {"out": r.output}


def latency_gate(doc: dict[str, Any]) -> dict[str, Any]:
    return next(g for g in doc["gates"] if g["type"] == "latency")


def test_repeatable_flags_spread_over_every_instance_and_name_the_slow_one() -> None:
    with loopback_fleet(FAST, FAST) as blue, loopback_fleet(FAST, FAST, SLOW) as green:
        args = [a for s in blue for a in ("--blue", s.url)]
        args += [a for s in green for a in ("--green", s.url)]
        code, doc = canary(*args, "--max-requests", "1500", "--concurrency", "4")
        slow_url = green[2].url
    assert code == 1, doc
    assert slow_url in latency_gate(doc)["reason"], latency_gate(doc)["reason"]
    rows = {(i["arm"], i["url"]): i for i in doc["instances"]}
    assert len(rows) == 5
    assert rows["green", slow_url]["verdict"] == "fail"
    assert all(i["n"] > 0 for i in doc["instances"])  # every instance was measured
    assert {i["pod"] for i in doc["instances"]} == {""}  # URLs only: no pod known


def test_a_policy_fleet_is_read_from_targets_urls(tmp_path: Path) -> None:
    with loopback_fleet(FAST, FAST) as blue, loopback_fleet(FAST, FAST) as green:
        policy = tmp_path / "fleet.yaml"
        text = url_policy("fleet", blue[0].url, green[0].url, """
  steps: [{weight: 0}]
  gates: [{type: latency}]
""").replace(f'url: "{blue[0].url}"', f'urls: ["{blue[0].url}", "{blue[1].url}"]')
        policy.write_text(text.replace(f'url: "{green[0].url}"',
                                       f'urls: ["{green[0].url}", "{green[1].url}"]'))
        code, doc = canary("--policy", str(policy), "--max-requests", "40")
        urls = {(s.url, "blue") for s in blue} | {(s.url, "green") for s in green}
    assert code in (0, 3), doc  # too few slices per instance to pass: never a fail
    assert {(i["url"], i["arm"]) for i in doc["instances"]} == urls


@pytest.fixture(scope="module")
def sd_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[str]]]:
    """One blue and three greens, the last on fp16 on the CPU (a real slow path)."""
    logs = tmp_path_factory.mktemp("sd-fleet")
    slow = ("--dtype", "fp16", "--allow-degraded")
    with sd_fleet(logs, (), (), (), slow) as urls:
        yield {"blue": urls[:1], "green": urls[1:]}


def test_a_real_sd_green_on_a_slow_path_fails_the_rollout_by_name(
        sd_servers: dict[str, list[str]], tmp_path: Path) -> None:
    blue, green = sd_servers["blue"], sd_servers["green"]
    policy = tmp_path / "sd.yaml"
    quoted = ", ".join(f'"{u}"' for u in green)
    policy.write_text(url_policy("sd-fleet", blue[0], green[0], """
  steps: [{weight: 0}]
  canary: {prompts: tiny-64, concurrency: 3, maxRequests: 300, warmupRequests: 1,
           timeoutSeconds: 30, deadlineSeconds: 240}
  gates: [{type: latency, maxRatio: 1.2}, {type: error-rate, maxRate: 0.05}]
""").replace(f'url: "{green[0]}"', f"urls: [{quoted}]"))
    code, doc = canary("--policy", str(policy))
    assert code == 1, doc
    reason = latency_gate(doc)["reason"]
    assert green[2] in reason, reason
    assert green[0] not in reason and green[1] not in reason
    by_url = {i["url"]: i for i in doc["instances"] if i["arm"] == "green"}
    assert by_url[green[2]]["verdict"] == "fail"
    assert by_url[green[2]]["p50"] > 2 * by_url[green[0]]["p50"]


def test_the_healthy_sd_greens_pass_on_their_own(sd_servers: dict[str, list[str]]) -> None:
    """Without the slow one, the same fleet is not failed (it passes or, on a busy machine,
    stays undecided: never a fail)."""
    args = ["--blue", sd_servers["blue"][0]]
    args += [a for u in sd_servers["green"][:2] for a in ("--green", u)]
    code, doc = canary(*args, "--max-requests", "120", "--concurrency", "2",
                       "--max-ratio", "1.2")
    assert code in (0, 3), doc
    assert {i["verdict"] for i in doc["instances"] if i["arm"] == "green"} <= {
        "pass", "inconclusive", "nodata"}
