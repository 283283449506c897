"""The controller's admission checks against loopback instances over real HTTP: each instance's
``/capabilities`` is read once and every check judges that read; failures become verdicts."""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gates.verdict import Verdict
from rollout.analysis import PolicyAnalyzer
from rollout.machine import Plan, RolloutStatus
from rollout.policy.loader import parse_policy

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = json.loads((ROOT / "bench/results/snapshot_h100.json").read_text())
FAST = {"modules": {m: {"device": "cuda:0", "dtype": "torch.float16", "attention": "sdpa"}
                    for m in ("text_encoder", "unet", "vae")}}


class Instance:
    """A loopback SD server's probes: ``/readyz`` and ``/capabilities``, with hit counts."""

    def __init__(self, pipeline: dict[str, Any], *, caps_status: int = 200) -> None:
        self.doc = {"snapshot": SNAPSHOT, "pipeline": pipeline, "degraded": False}
        self.caps_status = caps_status
        self.hits: Counter[str] = Counter()
        instance = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                instance.hits[self.path] += 1
                status, body = (200, {"ready": True}) if self.path == "/readyz" else \
                    (instance.caps_status, instance.doc)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


class Targets:
    """The part of a Platform that admission uses: where each colour serves."""

    def __init__(self, blue: Instance, green: list[Instance]) -> None:
        self.urls = {"blue": [blue.url], "green": [g.url for g in green]}

    def endpoints(self, color: str) -> list[str]:
        return self.urls[color]


@pytest.fixture
def blue() -> Iterator[Instance]:
    inst = Instance(FAST)
    yield inst
    inst.server.shutdown()


def admit(blue: Instance, green: list[Instance], tmp_path: Path) -> dict[str, Any]:
    policy = parse_policy(f"""
apiVersion: rollout-gates.dev/v1alpha1
kind: RolloutPolicy
metadata: {{name: adm}}
spec:
  targets:
    blue: {{type: url, url: "{blue.url}"}}
    green: {{type: url, url: "{green[0].url}"}}
  steps: [{{weight: 0}}]
  admission: {{samePathAsBlue: true}}
  gates:
    - {{type: capability, name: versions, fingerprint: same-as-blue}}
    - {{type: latency}}
""")
    analyzer = PolicyAnalyzer(policy, Targets(blue, green),  # type: ignore[arg-type]
                              records_dir=tmp_path)
    obs = analyzer.admit(RolloutStatus(name="adm", plan=Plan(weights=(0,))))
    return {name: (g.verdict, g.reason) for name, g in obs.gates.items()}


def test_each_instance_is_read_once_and_a_same_path_green_passes(
        blue: Instance, tmp_path: Path) -> None:
    greens = [Instance(FAST), Instance(FAST)]
    gates = admit(blue, greens, tmp_path)
    assert {k: v for k, (v, _) in gates.items()} == {
        "green-ready": Verdict.PASS, "execution-path": Verdict.PASS, "versions": Verdict.PASS}
    assert "2 green instance(s)" in gates["green-ready"][1]
    for g in greens:
        assert g.hits == {"/readyz": 1, "/capabilities": 1}
    assert blue.hits == {"/capabilities": 1}


def test_one_instance_on_generic_kernels_fails_the_path_check_by_name(
        blue: Instance, tmp_path: Path) -> None:
    math = copy.deepcopy(FAST)
    math["modules"]["unet"]["attention"] = "math"
    greens = [Instance(FAST), Instance(math)]
    verdict, reason = admit(blue, greens, tmp_path)["execution-path"]
    assert verdict is Verdict.FAIL
    assert f"{greens[1].url}: unet.attention 'sdpa' on blue, 'math' on green" in reason
    assert greens[0].url not in reason


def test_an_unreadable_capabilities_endpoint_is_a_verdict_not_a_crash(
        blue: Instance, tmp_path: Path) -> None:
    broken = Instance(FAST, caps_status=503)
    gates = admit(blue, [broken], tmp_path)
    assert gates["green-ready"][0] is Verdict.FAIL and "unreachable" in gates["green-ready"][1]
    assert gates["execution-path"][0] is Verdict.ERROR
    assert gates["versions"][0] is Verdict.ERROR and "HTTP 503" in gates["versions"][1]
    assert broken.hits["/capabilities"] == 1
