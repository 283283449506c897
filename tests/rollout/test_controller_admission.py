"""The controller's admission checks against loopback instances over real HTTP: each instance's
``/capabilities`` is read once and every check judges that read; failures become verdicts."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fakes import reply, url_policy

from gates.verdict import Verdict
from rollout.analysis import PolicyAnalyzer
from rollout.machine import Plan, RolloutStatus
from rollout.platforms.local import LocalPlatform
from rollout.policy.loader import parse_policy

ROOT = Path(__file__).resolve().parents[2]
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
                reply(self, status, json.dumps(body).encode())

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
    policy = parse_policy(url_policy("adm", blue.url, green[0].url, """
  steps: [{weight: 0}]
  admission: {samePathAsBlue: true}
  gates:
    - {type: capability, name: versions, fingerprint: same-as-blue}
    - {type: latency}
"""))
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


# -- interruption: should_stop ------------------------------------------------------------------

ABORT = "abort requested by user"


def analyzer(blue_url: str, green_url: str, tmp_path: Path, spec: str,
             **kw: Any) -> PolicyAnalyzer:
    policy = parse_policy(url_policy("stop", blue_url, green_url, spec + "\n"))
    return PolicyAnalyzer(policy, LocalPlatform(policy, log_dir=tmp_path), records_dir=tmp_path,
                          **kw)


STATUS = RolloutStatus(name="stop", plan=Plan(weights=(0,)))


def test_an_abort_asked_between_admission_reads_interrupts_it(
        blue: Instance, tmp_path: Path) -> None:
    green = Instance(FAST)
    a = analyzer(blue.url, green.url, tmp_path, """
  steps: [{weight: 0}]
  gates: [{type: latency}]""", should_stop=lambda: ABORT if green.hits["/readyz"] else None)
    obs = a.admit(STATUS)
    assert obs.error == f"analysis interrupted: {ABORT}"
    assert green.hits == {"/readyz": 1} and not blue.hits  # nothing read after the stop
    assert obs.evidence["interrupted"] == ABORT


def test_a_soak_asks_should_stop_in_short_steps(blue: Instance, tmp_path: Path) -> None:
    slept: list[float] = []
    a = analyzer(blue.url, blue.url, tmp_path, """
  steps: [{weight: 0}]
  promotion: {verifySeconds: 3600}
  gates: [{type: latency}]""", sleep=slept.append,
                 should_stop=lambda: ABORT if len(slept) >= 4 else None)
    obs = a.verify(STATUS)
    assert obs.error == f"analysis interrupted: {ABORT}" and not obs.gates
    assert slept == [0.25] * 4  # a second of the hour's soak, then the stop
    # without should_stop the soak is one sleep, as before
    slept.clear()
    b = analyzer(blue.url, blue.url, tmp_path, """
  steps: [{weight: 0, pauseSeconds: 5, canary: false}]
  metrics: {prometheus: {url: "http://127.0.0.1:1"}}
  limits: {exchangeSeconds: 1}
  gates: [{type: latency, source: prometheus}]""", sleep=slept.append)
    obs = b.analyze(STATUS, 0)
    # the soak, then the unreachable Prometheus retried with backoff up to the error limit
    assert obs.error is None and slept == [5.0, 0.5, 1.0, 2.0, 4.0]
    assert (obs.gates["latency"].verdict, obs.gates["latency"].errors) == (Verdict.ERROR, 5)


def test_a_canary_step_is_interrupted_within_one_slice_keeping_its_evidence(
        tmp_path: Path) -> None:
    from gates.canary.loopback import LoopbackBehaviour, LoopbackServer

    progress: list[Any] = []
    slow = LoopbackBehaviour(service_s=0.3)
    with LoopbackServer(slow) as b, LoopbackServer(slow) as g:
        a = analyzer(b.url, g.url, tmp_path, f"""
  steps: [{{weight: 0}}]
  canary: {{prompts: "{ROOT / 'policies/prompts/tiny-64.yaml'}", concurrency: 1,
           warmupRequests: 0, maxRequests: 200}}
  gates: [{{type: latency}}, {{type: error-rate}}]""", on_canary_progress=progress.append,
                     should_stop=lambda: ABORT if len(progress) >= 3 else None)
        t0 = time.monotonic()
        obs = a.analyze(STATUS, 0)
        took = time.monotonic() - t0
    assert obs.error == f"analysis interrupted: {ABORT}"
    assert took < 4 * 0.3 + 1.0  # three slices, at most one more: never the 200-slice budget
    canary = obs.evidence["canary"]
    assert canary["stopped_by"] == "cancelled" and canary["slices"]["judged"] == 3
    # measured until then, kept (the output check is on by default: images compared so far)
    assert set(obs.gates) == {"latency", "error-rate", "output"}
    assert all(gate.verdict is not Verdict.PASS for gate in obs.gates.values())


# -- engine manifest and version matrix: wired into admission ------------------------------------

def test_policy_engine_manifest_and_matrix_are_judged_at_admission(
        blue: Instance, tmp_path: Path) -> None:
    """The recorded H100 image has no TensorRT: its engines would be rebuilt at load, and a
    matrix pinning cuDNN 8 is off; each is a named gate failure before any traffic moves."""
    from gates.engine_build import BuiltEngine, manifest_entry, merge_entry, write_manifest
    from rollout.policy.loader import load_policy

    engines = tmp_path / "engines"
    engines.mkdir()
    (engines / "unet-512.plan").write_bytes(b"engine bytes")
    manifest = engines / "manifest.json"
    write_manifest(manifest, merge_entry(None, manifest_entry(
        manifest, BuiltEngine(path=engines / "unet-512.plan", tensorrt="10.3.0",
                              compute_capability="9.0"),
        model="sd15", component="unet", resolution="512x512", precision="fp16")))
    green = Instance(FAST)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(url_policy("adm", blue.url, green.url, """
  steps: [{weight: 0}]
  admission: {samePathAsBlue: false, engineManifest: engines/manifest.json}
  matrix: {cudnn: "8"}
  gates:
    - {type: latency}
"""))
    policy = load_policy(policy_file)  # the manifest resolves against the policy's directory
    assert policy.spec.admission.engine_manifest == str(manifest.resolve())
    obs = PolicyAnalyzer(policy, Targets(blue, [green]),  # type: ignore[arg-type]
                         records_dir=tmp_path).admit(
        RolloutStatus(name="adm", plan=Plan(weights=(0,))))
    engines_gate, matrix_gate = obs.gates["engines"], obs.gates["version-matrix"]
    assert engines_gate.verdict is Verdict.FAIL and "engines.tensorrt" in engines_gate.reason
    assert matrix_gate.verdict is Verdict.FAIL and "cudnn" in matrix_gate.reason
    green.server.shutdown()
