"""Reports and evidence bundles of real rollouts: a SQLite store, the Controller, and the real
policy analyzer running seeded canaries against loopback servers (admission and utilization are
scripted: they need SD servers and GPUs). :func:`loopback_rollout` is shared with the browser
test."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from fakes import Router
from typer.testing import CliRunner

from gates.canary.fleet import Instance
from gates.canary.loopback import LoopbackBehaviour, LoopbackServer
from gates.records import RecordsError
from gates.stats.sequential import SequentialJudge
from gates.utilization import UtilizationRequirements
from gates.utilization.floor import evaluate_utilization_floor
from gates.utilization.samples import GpuSamples, UtilizationSamples
from gates.verdict import Verdict
from rollout.analysis import PolicyAnalyzer
from rollout.cli import report as report_cli
from rollout.controller import Controller
from rollout.machine import GateResult, Observation, Plan, RolloutStatus
from rollout.policy.models import RolloutPolicy
from rollout.report import EvidenceWriter, load_records, load_rollout, render_report
from rollout.report.series import error_breakdown, replay_judge, running_quantile, slice_grid
from rollout.store import StateStore

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "policies" / "prompts" / "tiny-64.yaml")

FAST = LoopbackBehaviour(service_s=0.004, jitter_s=0.002, seed=1)
SLOW = LoopbackBehaviour(service_s=0.03, jitter_s=0.002, seed=2)
SAME = LoopbackBehaviour(service_s=0.004, jitter_s=0.002, seed=3)
FAILING = LoopbackBehaviour(service_s=0.004, status=500)

# -- the rollout harness --------------------------------------------------------------------


@dataclass
class Platform:
    urls: dict[str, str]

    def check(self) -> None:
        pass

    def endpoints(self, color: str) -> list[str]:
        return [self.urls[color]]

    def instances(self, color: str) -> list[Instance]:
        return [Instance(self.urls[color])]

    def config_map_text(self, name: str, key: str) -> str:
        raise AssertionError("the harness keeps no ConfigMaps")

    def wait_ready(self, color: str, *, timeout: float) -> None:
        pass

    def finish(self, status: RolloutStatus) -> None:
        pass


UTIL = UtilizationRequirements(name="gpu-busy", floor_percent=40, min_samples=5)


class HarnessAnalyzer:
    """The real PolicyAnalyzer for canary steps; admission and utilization scripted, in the
    shapes PolicyAnalyzer records (capability violations, pipelines, utilization samples)."""

    def __init__(self, policy: RolloutPolicy, platform: Platform, records: Path,
                 path_differs: bool) -> None:
        self.real = PolicyAnalyzer(policy, platform, records_dir=records)
        self.green = platform.urls["green"]
        self.path_differs = path_differs

    def admit(self, status: RolloutStatus) -> Observation:
        blue = {"modules": {"unet": {"backend": "torch", "device": "cuda", "dtype": "fp16",
                                     "attention": "sdpa"}}}
        green = {"modules": {"unet": {"backend": "torch", "device": "cuda", "dtype": "fp16",
                                      "attention": "math" if self.path_differs else "sdpa"}}}
        violations = [{"check": "torch.sdpa_flash", "expected": True, "observed": False,
                       "message": "flash attention disabled on green"}] if self.path_differs \
            else []
        verdict = Verdict.FAIL if self.path_differs else Verdict.PASS
        return Observation(gates={
            "green-ready": GateResult(Verdict.PASS, "1 green instance(s) ready"),
            "capability": GateResult(verdict, "; ".join(v["message"] for v in violations)
                                     or "meets the requirements")},
            evidence={"green_pipeline": {self.green: green}, "blue_pipeline": blue,
                      "capability": {self.green: violations},
                      "fault_injection": {self.green: {"active": True, "stall_rate": 0.2}}})

    def analyze(self, status: RolloutStatus, step: int) -> Observation:
        obs = self.real.analyze(status, step)
        samples = UtilizationSamples(source="prometheus", metric="gpu_util", gpus=(
            GpuSamples(gpu="0", name="H100", utilization_pct=(55, 60, 58, 62, 57, 59)),))
        res = evaluate_utilization_floor(UTIL, samples)
        from rollout.report import utilization_evidence

        return Observation(gates={**obs.gates, UTIL.name: GateResult(res.verdict, res.reason)},
                           evidence={**obs.evidence, "utilization": {
                               UTIL.name: utilization_evidence(UTIL, samples, res)}})

    def verify(self, status: RolloutStatus) -> Observation:
        raise AssertionError("no verification in these policies")


def policy_for(blue: str, green: str, *, max_requests: int, name: str,
               on_inconclusive: str = "rollback") -> RolloutPolicy:
    return RolloutPolicy.model_validate({
        "apiVersion": "rollout-gates.dev/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": name},
        "spec": {
            "targets": {"blue": {"type": "url", "url": blue},
                        "green": {"type": "url", "url": green}},
            "steps": [{"weight": 0}],
            "canary": {"prompts": TINY, "maxRequests": max_requests, "concurrency": 2,
                       "warmupRequests": 1, "timeoutSeconds": 5, "deadlineSeconds": 60},
            "gates": [{"type": "latency", "name": "p95", "maxRatio": 1.1},
                      {"type": "error-rate", "name": "errors", "maxRate": 0.05}],
            "rollback": {"onInconclusive": on_inconclusive},
        }})


@dataclass
class Rollout:
    state: Path
    final: RolloutStatus
    policy: RolloutPolicy
    store: StateStore
    controller: Controller


@contextmanager
def loopback_rollout(tmp: Path, green: LoopbackBehaviour, *, name: str = "shop",
                     max_requests: int = 150, path_differs: bool = False,
                     on_inconclusive: str = "rollback") -> Iterator[Rollout]:
    """Run one rollout to its end against loopback blue/green servers; servers stay up inside
    the ``with`` (for resumes)."""
    with LoopbackServer(FAST) as blue_srv, LoopbackServer(green) as green_srv:
        urls = {"blue": blue_srv.url, "green": green_srv.url}
        policy = policy_for(urls["blue"], urls["green"], max_requests=max_requests, name=name,
                            on_inconclusive=on_inconclusive)
        state = tmp / "state"
        store = StateStore(state)
        analyzer = HarnessAnalyzer(policy, Platform(urls), state / "records", path_differs)
        ctl = Controller(store, Router(), analyzer,
                         on_transition=EvidenceWriter(state, policy=policy))
        status = RolloutStatus(name=name, plan=Plan(weights=(0,),
                                                    on_inconclusive=on_inconclusive))
        store.save(status, previous=None)
        yield Rollout(state, ctl.run(status), policy, store, ctl)


@pytest.fixture(scope="module")
def failed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rollout]:
    with loopback_rollout(tmp_path_factory.mktemp("failed"), SLOW, path_differs=False) as r:
        yield r


# -- the report's data ----------------------------------------------------------------------


def test_slow_green_rolls_back_and_the_replay_reproduces_the_judge(failed: Rollout) -> None:
    assert failed.final.phase.value == "RolledBack"
    data = load_rollout("shop", failed.state)
    assert data.phase == "RolledBack" and "p95" in data.reason
    assert [e.to_phase for e in data.trail] == [
        "Pending", "Admitting", "Shifting", "Analyzing", "RollingBack", "RolledBack"]
    (run,) = data.canaries
    assert run.label == "step-0" and run.weight == 0 and run.blue_per_green == 1
    (gate,) = run.gates
    assert (gate.name, gate.quantile, gate.max_ratio, gate.alpha) == ("p95", 0.95, 1.1, 0.01)
    replay = replay_judge(run, gate)
    assert replay.result is not None and replay.agrees is True
    recorded = gate.recorded or {}
    assert recorded["verdict"] == "fail"
    assert replay.result.decided_at == recorded["decided_at"]
    assert replay.result.decision.e_value == pytest.approx(recorded["e_value"])
    # The e-value trajectory ends at the decision, where the evidence crossed its threshold
    # (or the fast-fail guard fired, which needs green slowest in every slice so far).
    e = replay.result.e_values
    assert e.size == recorded["decided_at"]
    assert e[-1] >= replay.result.decision.threshold or \
        replay.result.decision.reason.startswith("roll back: green")
    # The running quantiles end at the quantile of everything the judge could see.
    assert replay.green.sizes[-1] == replay.slices == run.latencies("green").size
    assert replay.green.value[-1] == pytest.approx(np.quantile(run.latencies("green"), 0.95))


def test_a_replay_over_other_records_says_it_does_not_match(failed: Rollout) -> None:
    (run,) = load_rollout("shop", failed.state).canaries
    faster = replace(run, rows=tuple({**r, "latency_s": r["latency_s"] / 100}
                                     if r["arm"] == "green" else r for r in run.rows))
    replay = replay_judge(faster, run.gates[0])
    assert replay.result is not None and replay.result.decision.verdict is not Verdict.FAIL
    assert replay.agrees is False
    assert "✗ The replay differs" in render_report(replace(
        load_rollout("shop", failed.state), canaries=(faster,)))


def test_report_sections_and_nothing_loaded_from_the_network(failed: Rollout) -> None:
    page = render_report(load_rollout("shop", failed.state))
    assert re.search(r'<div id="verdict" class="bad"><div class="phase">RolledBack</div>', page)
    for section in ("trail", "canary-step-0", "utilization", "capability"):
        assert f'id="{section}"' in page
    plots = re.findall(r'data-plot="([^"]+)"><svg', page)
    assert plots == ["timeline", "latency distributions", "judge p95", "utilization gpu-busy"]
    assert "✓ The replay reproduces the recorded judge" in page
    assert "runs with fault injection switched on" in page
    assert not re.search(r'(src|href)="(https?:)?//|url\((https?:)?//|@import', page)
    # ids are unique across the inline SVGs (clip paths would otherwise cross-resolve)
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))


def test_capability_table_shows_blue_and_green(tmp_path: Path) -> None:
    with loopback_rollout(tmp_path, SAME, path_differs=True, max_requests=5) as r:
        assert r.final.phase.value == "RolledBack"
    data = load_rollout("shop", r.state)
    assert data.canaries == ()  # admission failed: no traffic, no canary
    page = render_report(data)
    assert "flash attention disabled on green" in page
    row = re.search(r'<tr class="diff"><td>unet.attention</td><td>(\w+)</td><td>(\w+)</td>', page)
    assert row is not None and row.groups() == ("sdpa", "math")


def test_error_breakdown_of_a_failing_green(tmp_path: Path) -> None:
    with loopback_rollout(tmp_path, FAILING) as r:
        assert r.final.phase.value == "RolledBack"
    (run,) = load_rollout("shop", r.state).canaries
    green, blue = error_breakdown(run.rows, "green"), error_breakdown(run.rows, "blue")
    assert green.measured > 0 and green.errors["http_5xx"] == green.measured == green.failed
    assert green.statuses == {"500": green.measured} and green.judged == 0
    assert blue.failed == 0 and blue.excluded.get("slice-error") == blue.measured
    assert green.details[0][0].startswith("http_5xx")
    page = render_report(load_rollout("shop", r.state))
    assert "errors: " in page and "judge p95" not in page  # nothing judged: no trajectory


def test_resumed_step_rewrites_records_and_the_report_says_so(tmp_path: Path) -> None:
    with loopback_rollout(tmp_path, SAME, max_requests=4, on_inconclusive="pause") as r:
        assert r.final.phase.value == "Paused"
        r.store.request("shop", "resume")
        assert r.controller.run(r.final).phase.value == "Paused"
    data = load_rollout("shop", r.state)
    first, second = data.canaries
    assert first.rows == () and len(second.rows) > 0
    assert any("analysed again later" in n for n in data.notes)


def test_names_and_reasons_are_escaped_and_never_parsed_as_math(failed: Rollout) -> None:
    data = load_rollout("shop", failed.state)
    evil = "<script>alert(1)</script> $x_1$"
    trail = tuple(replace(e, gates={evil: {"verdict": "fail", "reason": evil}}, reason=evil)
                  for e in data.trail)
    (run,) = data.canaries
    gate = replace(run.gates[0], name=evil)
    page = render_report(replace(data, trail=trail, reason=evil,
                                 canaries=(replace(run, gates=(gate,)),)))
    assert "<script>" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt; $x_1$") > 5


def test_a_fixed_sample_method_shows_quantiles_without_a_trajectory(failed: Rollout) -> None:
    data = load_rollout("shop", failed.state)
    (run,) = data.canaries
    kayenta = replace(run.gates[0], method="kayenta", recorded=None)
    replay = replay_judge(run, kayenta)
    assert replay.result is None and replay.agrees is None
    page = render_report(replace(data, canaries=(replace(run, gates=(kayenta,)),)))
    assert 'data-plot="judge p95"><svg' in page and "a fixed-sample test judged once" in page


# -- records alone --------------------------------------------------------------------------


def test_records_only_report_recomputes_the_verdict(failed: Rollout, tmp_path: Path) -> None:
    records = failed.state / "records" / "shop"
    data = load_records(records)
    (run,) = data.canaries
    assert run.label == "step-0" and data.phase is None and data.trail == ()
    page = render_report(data)
    assert "Judge (replayed from records): fail" in page
    assert "not necessarily those of the run" in page


def test_malformed_records_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "requests.jsonl"
    f.write_text('{"arm": "green", "latency_s": 0.1, "ok": true}\n{"arm": "green", '
                 '"latency_s": -1, "ok": true}\n')
    with pytest.raises(RecordsError, match=r"requests.jsonl:2: latency_s -1"):
        load_records(f)


app = typer.Typer()
app.callback()(lambda: None)
report_cli.register(app)


def test_cli_writes_the_report_and_prints_its_path(failed: Rollout, tmp_path: Path) -> None:
    out = tmp_path / "r" / "shop.html"
    res = CliRunner().invoke(app, ["report", "shop", "--state-dir", str(failed.state),
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out) and "RolledBack" in out.read_text()
    res = CliRunner().invoke(app, ["report", "--records", str(failed.state / "records"),
                                   "--max-ratio", "1.1", "-o", str(tmp_path / "x.html")])
    assert res.exit_code == 0 and "maxRatio 1.1" in (tmp_path / "x.html").read_text()


@pytest.mark.parametrize("args", [["nope"], [], ["shop", "--records", "x"]])
def test_cli_bad_input_exits_2(failed: Rollout, tmp_path: Path, args: list[str]) -> None:
    res = CliRunner().invoke(app, ["report", *args, "--state-dir", str(failed.state),
                                   "-o", str(tmp_path / "x.html")])
    assert res.exit_code == 2 and not (tmp_path / "x.html").exists()


def test_without_matplotlib_the_tables_still_render(failed: Rollout,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rollout.report.plots", None)  # import fails
    page = render_report(load_rollout("shop", failed.state))
    assert "<svg" not in page and "pip install 'rollout-gates[report]'" in page
    assert 'id="verdict"' in page and "<table>" in page


# -- evidence bundles -----------------------------------------------------------------------


def bundles(state: Path, name: str = "shop") -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((state / "evidence" / name).glob("*.json"))]


def test_one_bundle_per_decision_with_inputs_method_parameters_results(failed: Rollout) -> None:
    docs = bundles(failed.state)
    history = failed.store.history("shop")[1:]  # the first row is the start, not a decision
    assert [(d["generation"], d["transition"]["to"]) for d in docs] == \
        [(h.generation, h.to_phase) for h in history]
    analysis = next(d for d in docs if d["transition"]["from"] == "Analyzing")
    p95 = analysis["gates"]["p95"]
    assert p95["method"] == "sequential latency test on seeded canary samples"
    assert p95["parameters"]["quantile"] == 0.95 and p95["parameters"]["max_ratio"] == 1.1
    assert p95["parameters"]["source"] == "canary"  # from the policy
    assert p95["result"]["verdict"] == "fail" and p95["result"]["decided_at"] >= 1
    assert analysis["inputs"]["canary"]["records"]["requests"].endswith("requests.jsonl")
    assert analysis["inputs"]["canary"]["arms"]["green"]["n"] >= p95["result"]["decided_at"]
    assert analysis["gates"]["gpu-busy"]["result"]["verdict"] == "pass"
    admission = next(d for d in docs if d["transition"]["from"] == "Admitting")
    assert admission["gates"]["green-ready"]["method"].startswith("every green instance")


def test_an_unwritable_evidence_dir_never_stops_the_rollout(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "evidence").write_text("a file where the directory should be")
    with caplog.at_level(logging.WARNING, "rollout.evidence"), \
            loopback_rollout(tmp_path, SAME, path_differs=True) as r:
        assert r.final.phase.value == "RolledBack"
    assert "evidence bundle" in caplog.text and "not written" in caplog.text


# -- the series -----------------------------------------------------------------------------


def test_running_quantile_bands_contain_the_estimate_and_open_only_when_n_is_small() -> None:
    x = np.random.default_rng(5).lognormal(0, 0.5, 300)
    rq = running_quantile(x, 0.95, slice_grid(300, 40))
    assert rq.sizes[0] == 1 and rq.sizes[-1] == 300 and rq.sizes.size == 40
    assert rq.value[-1] == pytest.approx(np.quantile(x, 0.95))
    bounded = ~np.isnan(rq.high)
    assert not bounded[0] and bounded[-1]  # 1 value cannot bound a P95; 300 can
    assert np.all(rq.low[bounded] <= rq.value[bounded])
    assert np.all(rq.value[bounded] <= rq.high[bounded])


def test_replay_agrees_with_a_judge_fed_slice_by_slice(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    k, n = 3, 120
    green, blue = rng.lognormal(0.2, 0.3, n), rng.lognormal(0, 0.3, n * k)
    judge = SequentialJudge(quantile=0.95, alpha=0.01, blue_per_green=k, max_ratio=1.0)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        judge.observe(green[i], blue[k * i:k * (i + 1)])
        rows.append({"slice": i, "arm": "green", "latency_s": green[i], "ok": True})
        rows += [{"slice": i, "arm": "blue", "latency_s": b, "ok": True}
                 for b in blue[k * i:k * (i + 1)]]
    d = judge.decision
    f = tmp_path / "requests.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run,) = load_records(f).canaries
    gate = type(run.gates[0])("p95", 0.95, 0.01, 1.0, recorded={
        "verdict": d.verdict.value, "decided_at": d.slices if d.decided else None,
        "slices": d.slices, "e_value": d.e_value})
    replay = replay_judge(run, gate)
    assert run.blue_per_green == k and replay.agrees is True
    assert replay.result is not None and replay.result.decision.verdict is d.verdict
