"""Release baselines: recorded by the real Controller's observer, diffed by ``rollout baselines``.

Two releases are rolled out in turn through the real Controller and SQLite store: admission
reads each green's ``/capabilities`` over loopback HTTP (the snapshot declares its image, as
the SD server does from ROLLOUT_IMAGE_DIGEST) through the real :func:`admission_gates`, and
each canary writes its records with the real :class:`RecordWriter`, green's latencies drawn
from known distributions (release B is 40% slower). Release A is promoted; B is rolled back,
and the rollback names A, the digest it restored, with A's recorded snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fakes import Router, serve_text
from typer.testing import CliRunner

from gates.canary.records import RecordWriter, RequestRecord
from gates.capability import CAPABILITIES_PATH
from gates.gate import GateResult
from gates.verdict import Verdict
from rollout.admission import admission_gates, read_endpoint
from rollout.baselines import ALL_PROMPTS, BaselineRecorder, BaselineStore, restored_release
from rollout.cli import app
from rollout.controller import Controller
from rollout.machine import Observation, Phase, Plan, RolloutStatus
from rollout.policy.models import LimitsSpec
from rollout.store import StateStore

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = json.loads((ROOT / "bench/results/snapshot_h100.json").read_text())
PATH = {"modules": {"unet": {"device": "cuda:0", "dtype": "torch.float16", "attention": "sdpa"}}}
DIGEST = {name: "sha256:" + c * 64 for name, c in (("Z", "0"), ("A", "a"), ("B", "b"))}
runner = CliRunner()


class Release:
    """A loopback green (or blue) declaring one image, with its canary latency profile."""

    def __init__(self, name: str, *, scale: float = 1.0, pytorch: str | None = None,
                 attention: str = "sdpa") -> None:
        snapshot = json.loads(json.dumps(SNAPSHOT))
        snapshot["image"] = {"ref": f"registry.example/sd/server:{name}", "digest": DIGEST[name]}
        if pytorch is not None:  # the derived version matrix and fingerprint follow it
            snapshot["torch"]["version"] = pytorch
            del snapshot["versions"], snapshot["fingerprint"]
        pipeline = json.loads(json.dumps(PATH))
        pipeline["modules"]["unet"]["attention"] = attention
        doc = {"snapshot": snapshot, "pipeline": pipeline, "degraded": False}
        self.server = serve_text(lambda: json.dumps(doc), "application/json")
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.scale = scale


class Analyzer:
    """Real admission reads and gates; the canary writes real records of known latencies."""

    def __init__(self, blue: Release, green: Release, records: Path, canary: Verdict) -> None:
        self.blue, self.green, self.records, self.canary = blue, green, records, canary

    def admit(self, status: RolloutStatus) -> Observation:
        limits = LimitsSpec()
        with httpx.Client() as client:
            ready = {self.green.url: read_endpoint(client, self.green.url, "/readyz", limits)}
            docs = {self.green.url: read_endpoint(client, self.green.url, CAPABILITIES_PATH,
                                                  limits)}
            blue = read_endpoint(client, self.blue.url, CAPABILITIES_PATH, limits)
        evidence: dict[str, Any] = {}
        gates = admission_gates(ready, docs, blue, [], same_path_as_blue=False,
                                evidence=evidence)
        return Observation(gates=gates, evidence=evidence)

    def analyze(self, status: RolloutStatus, step: int) -> Observation:
        rng = np.random.default_rng(step + int(self.green.scale * 10))
        with RecordWriter(self.records / f"gen{status.generation}-step-{step}") as writer:
            writer.write([
                RequestRecord(slice=i, arm="green", replica=0, order=0,
                              prompt_id=("cat", "dog")[i % 2], seed=i, start=float(i),
                              latency_s=float(rng.gamma(20, 0.05) * self.green.scale),
                              ok=True) for i in range(300)])
            paths = {k: str(v) for k, v in writer.paths.items()}
        return Observation(gates={"p95": GateResult(self.canary, "scripted canary verdict")},
                           evidence={"canary": {"records": paths}})

    def verify(self, status: RolloutStatus) -> Observation:
        return Observation(gates={"p95": GateResult(Verdict.PASS, "verified")})


@pytest.fixture
def releases() -> Iterator[dict[str, Release]]:
    made = {"Z": Release("Z"), "A": Release("A"),
            "B": Release("B", scale=1.4, pytorch="2.5.1+cu124", attention="math")}
    yield made
    for r in made.values():
        r.server.shutdown()


def roll_out(state: Path, blue: Release, green: Release, canary: Verdict,
             log: list[str]) -> RolloutStatus:
    store = StateStore(state)
    existing = store.load("rel")
    status = RolloutStatus(name="rel", plan=Plan(weights=(0, 100)))
    if existing is None:
        store.save(status, previous=None)
    else:
        status = status.model_copy(update={"generation": existing.generation + 1})
        store.save(status, previous=existing, evidence={"action": "new run"})
    analyzer = Analyzer(blue, green, state / "records", canary)
    ctl = Controller(store, Router(), analyzer,
                     on_transition=BaselineRecorder(state, log=log.append, clock=lambda: 1e9))
    return ctl.run(status)


@pytest.fixture
def recorded(releases: dict[str, Release], tmp_path: Path) -> tuple[Path, list[str]]:
    log: list[str] = []
    state = tmp_path / "state"
    first = roll_out(state, releases["Z"], releases["A"], Verdict.PASS, log)
    second = roll_out(state, releases["A"], releases["B"], Verdict.FAIL, log)
    assert (first.phase, second.phase) == (Phase.PROMOTED, Phase.ROLLED_BACK)
    return state, log


def test_each_admitted_release_is_kept_with_snapshot_path_and_latency(
        recorded: tuple[Path, list[str]]) -> None:
    state, _ = recorded
    store = BaselineStore.of(state)
    assert [b.digest for b in store.all()] == [DIGEST["A"], DIGEST["B"]]  # Z was never green
    admissions = [r.generation for r in StateStore(state).history("rel")
                  if (r.from_phase, r.to_phase) == ("Admitting", "Shifting")]
    a, b = store.get(DIGEST["A"]), store.get(DIGEST["B"])
    assert a is not None and b is not None
    assert (a.outcome, b.outcome) == ("Promoted", "RolledBack")
    assert [a.generation, b.generation] == admissions
    assert a.ref == "registry.example/sd/server:A"
    assert a.capability_snapshot().image is not None
    assert a.pipeline == PATH
    assert list(a.canary) == ["step-0", "step-1"]  # both steps ran a canary
    assert list(b.canary) == ["step-0"]  # rolled back after its first
    assert sorted(a.latencies()) == [ALL_PROMPTS, "cat", "dog"]
    assert len(a.latencies()[ALL_PROMPTS]) == 600 and len(a.latencies()["cat"]) == 300


def test_a_rollback_reports_the_digest_it_restored_and_its_snapshot(
        recorded: tuple[Path, list[str]]) -> None:
    state, log = recorded
    restored = restored_release(state, "rel")
    assert restored is not None and restored.digest == DIGEST["A"]
    assert restored.baseline is not None
    snap = restored.baseline.capability_snapshot()
    assert len(log) == 1  # only the rollback reports a restored release
    assert log[0].startswith(f"rollout rel: restored {DIGEST['A']} (registry.example/sd/server:A)"
                             f": baseline of 2001-09-09 01:46:40 UTC, snapshot fingerprint "
                             f"{snap.fingerprint} (")
    assert f"torch {snap.versions.torch}" in log[0]


def test_baselines_diff_prints_capability_path_and_latency_shift(
        recorded: tuple[Path, list[str]]) -> None:
    state, _ = recorded
    result = runner.invoke(app, ["baselines", "diff", "sha256:aaaa", "bbbb",
                                 "--state-dir", str(state)])
    assert result.exit_code == 1, result.output
    out = result.output
    assert "torch" in out and "2.5.1+cu124" in out  # the snapshot fact that changed
    assert "image" in out and DIGEST["B"] in out
    assert "unet.attention" in out and "math" in out  # the execution path
    doc = json.loads(runner.invoke(app, ["baselines", "diff", DIGEST["A"], DIGEST["B"],
                                         "--state-dir", str(state), "-o", "json"]).stdout)
    changed = {(e["category"], e["key"]): (e["blue"], e["green"])  # A, B
               for e in doc["capability"]}
    assert changed[("image", "digest")] == (DIGEST["A"], DIGEST["B"])
    assert changed[("versions", "torch")] == (SNAPSHOT["torch"]["version"], "2.5.1+cu124")
    assert doc["execution_path"]["unet.attention"] == ["sdpa", "math"]
    for prompt in (ALL_PROMPTS, "cat", "dog"):
        p50, p95 = doc["latency"][prompt]["shifts"]
        for shift in (p50, p95):
            lo, hi = shift["ratio_ci"]
            assert 1.0 < lo < shift["ratio"] < hi, (prompt, shift)  # B is 1.4x slower
            assert 1.2 < shift["ratio"] < 1.6
    assert doc["latency_shifted"] is True
    assert doc["image"] is None  # neither release was audited


def test_a_release_against_itself_does_not_differ(recorded: tuple[Path, list[str]]) -> None:
    state, _ = recorded
    same = runner.invoke(app, ["baselines", "diff", "aa", "aa", "--state-dir", str(state)])
    assert same.exit_code == 0, same.output
    assert "0 fact(s) differ" in same.output


def test_list_show_and_bad_input(recorded: tuple[Path, list[str]]) -> None:
    state, _ = recorded
    listed = runner.invoke(app, ["baselines", "list", "--state-dir", str(state), "-o", "json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)["baselines"]
    assert [(r["digest"], r["outcome"]) for r in rows] == [(DIGEST["A"], "Promoted"),
                                                           (DIGEST["B"], "RolledBack")]
    shown = runner.invoke(app, ["baselines", "show", "b", "--state-dir", str(state)])
    assert shown.exit_code == 0, shown.output
    assert "2.5.1+cu124" in shown.output and "cat" in shown.output and "dog" in shown.output
    as_json = json.loads(runner.invoke(app, ["baselines", "show", "a", "--state-dir", str(state),
                                             "-o", "json"]).stdout)
    assert as_json["latency"]["cat"]["n"] == 300
    missing = runner.invoke(app, ["baselines", "show", "c0ffee", "--state-dir", str(state)])
    assert missing.exit_code == 2 and "no baseline" in missing.output
    bad = runner.invoke(app, ["baselines", "diff", "xyz", "a", "--state-dir", str(state)])
    assert bad.exit_code == 2 and "not a digest" in bad.output


def test_the_report_links_the_two_baselines_it_compared(
        recorded: tuple[Path, list[str]]) -> None:
    from rollout.report import load_rollout, render_report

    state, _ = recorded
    store = BaselineStore.of(state)
    data = load_rollout("rel", state)  # the latest run: A (blue) against B (green)
    assert data.baselines == (("blue", DIGEST["A"], store.path(DIGEST["A"])),
                              ("green", DIGEST["B"], store.path(DIGEST["B"])))
    page = render_report(data)
    assert page.count('href="file://') == 2
    assert store.path(DIGEST["A"]).resolve().as_uri() in page
    assert f"rollout baselines diff {DIGEST['A'][:19]} {DIGEST['B'][:19]}" in page
