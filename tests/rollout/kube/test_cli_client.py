"""The ``rollout`` CLI as a client of the in-cluster controller, against kmock over real HTTP.

The controller is played by the test itself: it writes ``.status`` through the status
subresource as ``rollout controller`` would (including a status of an older generation, which
must never be read as the verdict on a newer spec), so every exit code of ``promote --wait``
and every refusal of an intent is checked against what the CLI really reads and writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from apiserver import FAST_RETRY, NS, SELECTOR, Cluster, make_policy
from typer.testing import CliRunner, Result

from rollout.cli import app
from rollout.cluster import ClusterRollouts, RolloutView, manifest
from rollout.errors import NotFoundError
from rollout.k8s.client import ROLLOUT_POLICIES, KubeClient
from rollout.k8s.resource import ConditionStatus, GateStatus, InstanceStatus, RolloutPolicyStatus
from rollout.machine import Phase, Plan, RolloutStatus
from rollout.platforms.kube_store import ConfigMapStatusStore
from rollout.policy.loader import load_policy

WATCH_PATH = r"/rolloutpolicies$"  # the collection: lists and watches, never a single GET
runner = CliRunner()


@dataclass
class Env:
    """A kmock API server serving RolloutPolicies, a client, and a kubeconfig naming it."""

    cluster: Cluster
    kube: KubeClient
    kubeconfig: Path
    tmp: Path

    def rollout(self, *args: str) -> Result:
        """The CLI in-process (the real process runs in the GitOps test below). The
        kubeconfig is passed as a flag: the kubernetes package reads $KUBECONFIG once, when
        it is first imported, which in this process was long before."""
        return runner.invoke(app, [*args, "--kubeconfig", str(self.kubeconfig)],
                             env={"ROLLOUT_PLATFORM": None})

    def policy(self, name: str = "sd", **spec: Any) -> Path:
        """A kubernetes policy file for rollout ``name`` (``spec`` keys replace the spec's)."""
        target = {"type": "kubernetes", "namespace": NS, "port": 8000}
        doc = {"apiVersion": "rollout-gates.dev/v1alpha1", "kind": "RolloutPolicy",
               "metadata": {"name": name, "labels": {"team": "imaging"}},
               "spec": {"platform": "kubernetes",
                        "targets": {c: {**target, "deployment": f"sd-{c}",
                                        "service": f"sd-{c}"} for c in ("blue", "green")},
                        "router": {"type": "service-selector", "activeService": "sd-active",
                                   "previewService": "sd-preview"},
                        "steps": [{"weight": 0}], "gates": [{"type": "latency"}],
                        "rollback": {"scaleDownDelaySeconds": 0}, **spec}}
        path = self.tmp / f"{name}-{len(list(self.tmp.glob('*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        return path

    def set_status(self, name: str, status: RolloutPolicyStatus) -> None:
        """Write ``.status`` as the controller does (the status subresource)."""
        self.kube.patch(ROLLOUT_POLICIES, NS, name,
                        {"status": status.model_dump(mode="json", by_alias=True)},
                        subresource="status")

    def obj(self, name: str = "sd") -> dict[str, Any]:
        return self.kube.get(ROLLOUT_POLICIES, NS, name)


@pytest.fixture
def env(cluster: Cluster, tmp_path: Path) -> Env:
    kube = cluster.client(tmp_path)
    kubeconfig = sorted(tmp_path.glob("kubeconfig-*"))[-1]
    return Env(cluster, kube, kubeconfig, tmp_path)


def status(generation: int, phase: str, **kw: Any) -> RolloutPolicyStatus:
    return RolloutPolicyStatus(observed_generation=generation, phase=phase, steps=1, **kw)


class Controller:
    """Plays the controller: once the CR reaches each status's observedGeneration, writes it
    (after ``delay`` s, so the CLI is already following when it lands)."""

    def __init__(self, env: Env, name: str, *script: RolloutPolicyStatus,
                 delay: float = 0.2) -> None:
        self.env, self.name, self.script, self.delay = env, name, script, delay
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            for st in self.script:
                deadline = time.monotonic() + 20
                while self._generation() < st.observed_generation:
                    assert time.monotonic() < deadline, "the CLI never applied the spec"
                    time.sleep(0.02)
                time.sleep(self.delay)
                self.env.set_status(self.name, st)
        except BaseException as e:  # reported by __exit__
            self.error = e

    def _generation(self) -> int:
        try:
            return int(self.env.obj(self.name)["metadata"].get("generation") or 0)
        except NotFoundError:  # not applied yet
            return 0

    def __enter__(self) -> Controller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(30)
        assert self.error is None, self.error


# -- apply ------------------------------------------------------------------------------------


def test_apply_creates_then_same_spec_is_a_noop_and_a_change_is_a_new_generation(
        env: Env) -> None:
    first = env.rollout("promote", "--policy", str(env.policy()), "--output", "json")
    assert first.exit_code == 0, first.output
    created = json.loads(first.stdout)
    assert (created["applied"], created["generation"], created["phase"]) == ("created", 1,
                                                                            "Pending")
    obj = env.obj()
    assert obj["metadata"]["labels"] == {"team": "imaging"}
    assert obj["spec"]["platform"] == "kubernetes" and obj["spec"]["router"]["type"]
    assert "canary" not in obj["spec"]  # defaults are the controller's, not pinned here

    # the API server (or a GitOps tool) wrote a default explicitly: it means the same
    env.kube.patch(ROLLOUT_POLICIES, NS, "sd", {"spec": {"rollback": {
        **obj["spec"]["rollback"], "onInconclusive": "rollback"}}})
    rv, generation = (env.obj()["metadata"][k] for k in ("resourceVersion", "generation"))
    patches = env.cluster.requests("PATCH", r"/rolloutpolicies/sd$")
    again = env.rollout("promote", "--policy", str(env.policy()), "-o", "json")
    assert again.exit_code == 0 and json.loads(again.stdout)["applied"] == "unchanged"
    assert env.cluster.requests("PATCH", r"/rolloutpolicies/sd$") == patches
    assert env.obj()["metadata"]["resourceVersion"] == rv

    changed = env.rollout("promote", "--policy", str(env.policy(
        steps=[{"weight": 10}, {"weight": 50}], rollback={"scaleDownDelaySeconds": 5})),
        "-o", "json")
    assert changed.exit_code == 0, changed.output
    assert json.loads(changed.stdout)["applied"] == "configured"
    obj = env.obj()
    assert obj["metadata"]["generation"] == generation + 1
    assert [s["weight"] for s in obj["spec"]["steps"]] == [10, 50]
    assert obj["spec"]["rollback"] == {"scaleDownDelaySeconds": 5}  # the dropped key is gone


def test_platform_flag_applies_a_local_policy_as_a_kubernetes_one(env: Env) -> None:
    path = env.policy(platform="local")
    res = env.rollout("promote", "--policy", str(path), "--platform",
                      "kubernetes", "--namespace", "other", "-o", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["namespace"] == "other"
    assert env.kube.get(ROLLOUT_POLICIES, "other", "sd")["spec"]["platform"] == "kubernetes"


def test_namespace_is_the_flag_else_the_policys_else_its_blue_targets(env: Env) -> None:
    path = env.policy()
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["metadata"]["namespace"] = "team-a"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    declared = env.rollout("promote", "--policy", str(path), "-o", "json")
    assert json.loads(declared.stdout)["namespace"] == "team-a", declared.output
    flagged = env.rollout("promote", "--policy", str(path), "-n", "team-b", "-o", "json")
    assert json.loads(flagged.stdout)["namespace"] == "team-b", flagged.output
    implied = env.rollout("promote", "--policy", str(env.policy()), "-o", "json")
    assert json.loads(implied.stdout)["namespace"] == NS  # targets.blue.namespace


# -- promote --wait: the GitOps step -----------------------------------------------------------


@pytest.mark.parametrize(("final", "code"), [
    (status(2, "Promoted", green_weight=100, blue_weight=0, verdict="pass"), 0),
    (status(2, "RolledBack", green_weight=0, blue_weight=100, verdict="fail"), 1),
    (status(2, "Aborted", green_weight=0, blue_weight=100), 1),
    (status(2, "Paused", awaiting_promotion=True, verdict="pass"), 3),
    (status(2, "Paused", verdict="inconclusive"), 3),
    (status(2, "Paused", verdict="nodata"), 4),
    (status(2, "RolledBack", internal_error=True, verdict="error"), 5),
], ids=["promoted", "rolled-back", "aborted", "awaiting", "inconclusive", "nodata", "internal"])
def test_wait_exits_per_the_status_of_the_new_generation_only(
        env: Env, final: RolloutPolicyStatus, code: int) -> None:
    env.rollout("promote", "--policy", str(env.policy()))
    env.set_status("sd", status(1, "Promoted", green_weight=100, blue_weight=0))  # the old run
    with Controller(env, "sd", status(2, "Shifting", step=0, green_weight=10, blue_weight=90),
                    final):
        res = env.rollout("promote", "--policy", str(env.policy(steps=[{"weight": 10}])),
                          "--wait", "--timeout", "30", "--output", "json")
    assert res.exit_code == code, res.output
    doc = json.loads(res.stdout)
    assert (doc["phase"], doc["observedGeneration"], doc["wait"]) == (final.phase, 2,
                                                                       "settled")
    assert "still describes generation 1 (Promoted)" in res.stderr
    assert "Shifting step 0/1  weights blue 90/green 10" in res.stderr


def test_wait_times_out_with_3_and_names_the_controller(env: Env) -> None:
    t0 = time.monotonic()
    res = env.rollout("promote", "--policy", str(env.policy()), "--wait", "--timeout", "1.5")
    assert res.exit_code == 3, res.output
    assert 1.4 < time.monotonic() - t0 < 10
    assert "gave up after 1.5s: sd is Pending" in res.stderr
    assert "is 'rollout controller' running for namespace sd?" in res.stderr


def test_bad_input_and_refused_calls_exit_2_with_the_reason(env: Env, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: rollout-gates.dev/v1alpha1\nkind: RolloutPolicy\n",
                      encoding="utf-8")
    res = env.rollout("promote", "--policy", str(broken), "--platform", "kubernetes")
    assert res.exit_code == 2 and "invalid policy" in res.stderr
    env.cluster.fault("POST", WATCH_PATH, status=403)
    denied = env.rollout("promote", "--policy", str(env.policy()), "-o", "json")
    assert denied.exit_code == 2
    assert "AccessDeniedError" in denied.stderr and "Role" in denied.stderr
    assert json.loads(denied.stdout)["verdict"] == "error"
    env.cluster.fault("GET", WATCH_PATH, status=503, times=10)  # past the client's retries
    away = env.rollout("list", "--platform", "kubernetes", "-n", NS)
    assert away.exit_code == 2 and "UnavailableError" in away.stderr
    assert "temporary: the same command may succeed later" in away.stderr


def test_the_gitops_argv_in_a_real_process(env: Env) -> None:
    """Exactly the PostSync Job's args, through the console entry point."""
    path = env.policy()
    with Controller(env, "sd", status(1, "Analyzing", step=0),
                    status(1, "Promoted", green_weight=100, blue_weight=0, verdict="pass")):
        proc = subprocess.run(
            [sys.executable, "-m", "rollout.cli", "promote", "--platform", "kubernetes",
             "--policy", str(path), "--wait", "--timeout", "60", "--output", "json"],
            check=False, capture_output=True, text=True, timeout=120,
            env={"KUBECONFIG": str(env.kubeconfig), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["status"]["greenWeight"] == 100


# -- following a watch that ends, drops and expires ------------------------------------------


def test_follow_survives_ended_dropped_and_expired_watches(env: Env) -> None:
    kube = env.cluster.client(env.tmp, retry=FAST_RETRY)
    rollouts = ClusterRollouts(kube, NS, watch_seconds=1)
    applied = rollouts.apply(load_policy(env.policy()))
    # every watch request after the first is refused: 410 once, then 503 more times than the
    # client's own retries (4) absorb, so the follower must reconnect by itself
    env.cluster.fault("GET", WATCH_PATH, status=410, after=1)
    env.cluster.fault("GET", WATCH_PATH, status=503, times=6, after=2)
    seen: list[str] = []
    logs: list[str] = []
    with Controller(env, "sd", status(1, "Analyzing"), status(1, "RolledBack"), delay=1.3):
        end = rollouts.follow(applied.view, timeout=30, log=logs.append,
                              on_update=lambda v: seen.append(v.phase))
    assert (end.why, end.view.phase) == ("settled", "RolledBack")
    assert seen[0] == "Pending" and seen[-1] == "RolledBack"
    assert any("expired" in m for m in logs) and any("dropped" in m for m in logs)
    assert env.cluster.requests("GET", WATCH_PATH) >= 3


def test_follow_reports_a_deleted_rollout(env: Env) -> None:
    rollouts = ClusterRollouts(env.cluster.client(env.tmp, retry=FAST_RETRY), NS)
    applied = rollouts.apply(load_policy(env.policy()))

    def delete() -> None:
        time.sleep(0.3)
        urllib.request.urlopen(urllib.request.Request(
            env.cluster.url + ROLLOUT_POLICIES.path(NS, "sd"), method="DELETE"), timeout=5)

    threading.Thread(target=delete, daemon=True).start()
    end = rollouts.follow(applied.view, timeout=20, on_update=lambda v: None)
    assert end.why == "deleted"


# -- intents ----------------------------------------------------------------------------------


def _pending(env: Env) -> RolloutStatus:
    store = ConfigMapStatusStore(env.kube, NS)
    flags, _ = store.pending_intents(RolloutStatus(name="sd", plan=Plan(weights=(0,))))
    return flags


@pytest.mark.parametrize(("phase", "extra", "accepted", "refused"), [
    ("Analyzing", {}, ["pause", "abort"], {"retry": "RolledBack or Aborted",
                                            "resume": "not paused",
                                            "promote": "--confirm applies only"}),
    ("Paused", {"awaiting_promotion": True}, ["promote", "rollback"],
     {"resume": "promote sd --confirm", "pause": "Shifting/Analyzing"}),
    ("Promoted", {}, [], {"abort": "apply the previous spec", "rollback": "nothing to rollback",
                          "retry": "apply a new spec"}),
    ("RolledBack", {}, ["retry"], {"abort": "already on blue", "pause": "Shifting/Analyzing"}),
])
def test_intents_are_recorded_for_the_controller_or_refused(
        env: Env, phase: str, extra: dict[str, Any], accepted: list[str],
        refused: dict[str, str]) -> None:
    env.rollout("promote", "--policy", str(env.policy()))
    env.set_status("sd", status(1, phase, **extra))
    for intent, why in refused.items():
        verb = ["promote", "sd", "--confirm"] if intent == "promote" else [intent, "sd"]
        res = env.rollout(*verb, "--platform", "kubernetes", "-n", NS)
        assert res.exit_code == 2, (intent, res.output)
        assert why in res.stderr, (intent, res.stderr)
    for intent in accepted:
        verb = ["promote", "sd", "--confirm"] if intent == "promote" else [intent, "sd"]
        res = env.rollout(*verb, "--platform", "kubernetes", "-n", NS, "-o", "json")
        assert res.exit_code == 0, (intent, res.output)
        doc = json.loads(res.stdout)
        assert (doc["intent"], doc["recorded"], doc["phase"]) == (intent, True, phase)
        assert "the controller" in doc["expect"]
    flags = _pending(env)
    for intent in ("abort", "rollback", "resume", "promote", "pause", "retry"):
        assert getattr(flags, f"{intent}_requested") is (intent in accepted), intent


def test_an_intent_on_a_new_generation_waits_for_the_controller(env: Env) -> None:
    """A status of an older generation says nothing about what may apply now: the rollout of
    the new spec is Pending, so it may be aborted but not yet paused."""
    env.rollout("promote", "--policy", str(env.policy()))
    env.set_status("sd", status(1, "Analyzing"))
    env.rollout("promote", "--policy", str(env.policy(steps=[{"weight": 5}])))
    res = env.rollout("pause", "sd", "--platform", "kubernetes", "-n", NS)
    assert res.exit_code == 2 and "sd is Pending" in res.stderr
    assert env.rollout("abort", "sd", "--platform", "kubernetes", "-n", NS).exit_code == 0


def test_unknown_name_lists_the_rollouts_there_are(env: Env) -> None:
    env.rollout("promote", "--policy", str(env.policy("alpha")))
    env.rollout("promote", "--policy", str(env.policy("beta")))
    for verb in (["abort", "nope"], ["status", "nope"], ["history", "nope"]):
        res = env.rollout(*verb, "--platform", "kubernetes", "-n", NS)
        assert res.exit_code == 2, verb
        assert "no RolloutPolicy 'nope' in namespace sd; there are: alpha, beta" in res.stderr
    assert env.cluster.requests("POST", r"/configmaps$") == 0  # nothing recorded


def test_local_mode_keeps_its_verbs_and_refuses_cluster_only_ones(tmp_path: Path) -> None:
    res = runner.invoke(app, ["pause", "sd", "--state-dir", str(tmp_path)],
                        env={"ROLLOUT_PLATFORM": None})
    assert res.exit_code == 2 and "--platform kubernetes" in res.stderr
    res = runner.invoke(app, ["status", "sd", "--state-dir", str(tmp_path)],
                        env={"ROLLOUT_PLATFORM": None})
    assert res.exit_code == 2 and f"no rollout 'sd' in {tmp_path}" in res.stderr


# -- reading: status, history, list ---------------------------------------------------------


def _record_history(env: Env) -> None:
    store = ConfigMapStatusStore(env.kube, NS)
    s = RolloutStatus(name="sd", plan=Plan(weights=(0,)))
    store.save(s, previous=None)
    rolled = s.model_copy(update={"generation": 1, "phase": Phase.ROLLING_BACK,
                                  "reason": "step 0 analysis fail: green-2 slower"})
    store.save(rolled, previous=s, evidence={"instances": 3})


def test_status_shows_instances_gates_conditions_and_history(env: Env) -> None:
    env.rollout("promote", "--policy", str(env.policy()))
    _record_history(env)
    env.set_status("sd", status(
        1, "RolledBack", blue_weight=100, green_weight=0, verdict="fail",
        reason="step 0 analysis fail: latency: green pod sd-green-2 on node gpu-b slower",
        gates=[GateStatus(name="latency", verdict="fail", reason="sd-green-2 slower")],
        instances=[InstanceStatus(arm="green", url="http://127.0.20.3:8000", pod="sd-green-2",
                                  node="gpu-b", n=40, p50=0.8, p95=1.9, verdict="fail")],
        conditions=[ConditionStatus(type="Stalled", status="True", reason="RolledBack",
                                    last_transition_time="2026-12-06T20:00:00Z")],
        history_config_map="rollout-sd"))
    text = env.rollout("status", "sd", "--platform", "kubernetes", "-n", NS)
    assert text.exit_code == 1, text.output
    for part in ("ROLLEDBACK", "blue 100 / green 0 (read back)", "gate latency: FAIL",
                 "sd-green-2 on gpu-b", "p95 1.900s", "Stalled=True",
                 "-> RollingBack step 0  step 0 analysis fail: green-2 slower"):
        assert part in text.stdout, part
    doc = json.loads(env.rollout("status", "sd", "--platform", "kubernetes", "-n", NS,
                                 "-o", "json").stdout)
    assert doc["status"]["instances"][0]["node"] == "gpu-b"
    assert doc["verdicts"] == {"latency": "fail"} and len(doc["history"]) == 2

    hist = env.rollout("history", "sd", "--platform", "kubernetes", "-n", NS, "-o", "json")
    assert hist.exit_code == 0
    rows = json.loads(hist.stdout)
    assert [r["to"] for r in rows] == ["Pending", "RollingBack"]
    assert rows[1]["evidence"] == {"instances": 3}


def test_status_watch_follows_until_settled(env: Env) -> None:
    env.rollout("promote", "--policy", str(env.policy()))
    with Controller(env, "sd", status(1, "Analyzing"), status(1, "Paused", verdict="nodata"),
                    delay=1.0):
        res = env.rollout("status", "sd", "--watch", "--platform", "kubernetes", "-n", NS)
    assert res.exit_code == 4, res.output
    shown = [line.split()[-1] for line in res.stdout.splitlines()
             if line.startswith("rollout sd (RolloutPolicy sd/sd")]
    assert len(shown) >= 2 and shown[-1] == "PAUSED" and "PAUSED" not in shown[:-1]


def test_history_of_a_rollout_not_started_yet(env: Env) -> None:
    env.rollout("promote", "--policy", str(env.policy()))
    res = env.rollout("history", "sd", "--platform", "kubernetes", "-n", NS)
    assert res.exit_code == 2 and "the controller has not started it" in res.stderr


def test_list_in_one_namespace_and_in_all(env: Env) -> None:
    env.rollout("promote", "--policy", str(env.policy("alpha")))
    env.rollout("promote", "--policy", str(env.policy("beta")))
    env.rollout("promote", "--policy", str(env.policy("gamma")), "-n", "other")
    env.set_status("alpha", status(1, "Analyzing", step=0, green_weight=25, blue_weight=75,
                                   verdict="continue"))
    res = env.rollout("list", "--platform", "kubernetes", "-n", NS)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "STEP", "GREEN", "VERDICT", "AGE"]
    assert lines[1].split()[:5] == ["alpha", "Analyzing", "0/1", "25", "continue"]
    assert lines[2].split()[:5] == ["beta", "Pending", "-", "-", "-"]
    assert len(lines) == 3
    everywhere = json.loads(env.rollout("list", "--platform", "kubernetes", "-A",
                                        "-o", "json").stdout)
    assert [(r["namespace"], r["name"]) for r in everywhere] == [
        ("other", "gamma"), (NS, "alpha"), (NS, "beta")]
    wide = env.rollout("list", "--platform", "kubernetes", "--all-namespaces")
    assert wide.stdout.splitlines()[0].split()[0] == "NAMESPACE"


def test_view_of_a_status_from_another_controller_version_is_refused(env: Env) -> None:
    obj = manifest(make_policy(SELECTOR), NS)
    obj["metadata"].update(generation=1, uid="u")
    obj["status"] = {"phase": "Promoted", "observedGeneration": 1, "someNewField": 1}
    with pytest.raises(Exception, match="does not match this CLI's model"):
        RolloutView.of(obj)

