"""The in-cluster controller against the kmock API server: real kopf watching real HTTP, the real
engine, platform, routers and ConfigMap store; only the gate verdicts are scripted."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kopf
import pytest
from apiserver import NS, Cluster, FakeDeploymentController, ScriptedAnalyzer, seed

from gates.gate import GateResult
from gates.verdict import Verdict
from rollout.engine import Engine
from rollout.k8s.client import DEPLOYMENTS, ROLLOUT_POLICIES, SERVICES, KubeClient
from rollout.machine import Observation
from rollout.operator.reconcile import Reconciler
from rollout.operator.runner import registry_for, settings_for
from rollout.platforms.kube_store import ConfigMapStatusStore, object_name

PASS, FAIL = Verdict.PASS, Verdict.FAIL
POLICIES = "rollout-gates.dev/v1alpha1/rolloutpolicies"


class Gates(ScriptedAnalyzer):
    """Scripted verdicts (PASS once the script is over) with per-instance evidence; the first
    call named ``hold`` blocks until released (the test acts mid-analysis)."""

    def __init__(self, *verdicts: Verdict, hold: str | None = None) -> None:
        super().__init__(*verdicts)
        self.hold = hold
        self.release = threading.Event()

    def _obs(self, what: str) -> Observation:
        self.calls.append(what)
        if what == self.hold:
            self.hold = None
            assert self.release.wait(30), "test never released the analysis"
        verdict = next(self.verdicts, PASS)
        return Observation(gates={"p95": GateResult(verdict, f"{what}: {verdict.value}")},
                           evidence={"canary": {"instances": [
                               {"arm": "green", "url": "http://127.0.20.1:8000",
                                "pod": "sd-green-0", "node": "gpu-1", "n": 10, "p50": 0.1,
                                "p95": 0.2, "errors": 0, "verdict": verdict.value}]}})


def policy(name: str = "sd", *, steps: tuple[int, ...] = (0, 50), auto: bool = True,
           delay: float = 0) -> dict[str, Any]:
    """A policy for the fleet ``name`` seeded by :func:`apiserver.seed`."""
    target = {"type": "kubernetes", "namespace": NS, "port": 8000}
    return {"apiVersion": "rollout-gates.dev/v1alpha1", "kind": "RolloutPolicy",
            "metadata": {"name": name, "labels": {"team": "imaging"}},
            "spec": {"platform": "kubernetes",
                     "targets": {c: {**target, "deployment": f"{name}-{c}",
                                     "service": f"{name}-{c}"} for c in ("blue", "green")},
                     "router": {"type": "gateway-api", "httpRoute": name},
                     "steps": [{"weight": w} for w in steps], "gates": [{"type": "latency"}],
                     "promotion": {"auto": auto},
                     "rollback": {"scaleDownDelaySeconds": delay}}}


@contextmanager
def operator(kube: KubeClient, tmp_path: Path, gates: Gates,
             by_name: dict[str, Gates] | None = None) -> Iterator[Reconciler]:
    """kopf with our registry in a thread of its own, stopped (and joined) at the end."""
    def script(engine: Engine) -> None:
        assert engine.policy is not None
        engine.controller.analyzer = (by_name or {}).get(engine.policy.metadata.name, gates)

    reconciler = Reconciler(kube, tmp_path / "state", poll=0.2, customize=script)
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(kopf.operator(
        registry=registry_for(kube, reconciler), settings=settings_for(), standalone=True,
        namespaces=[NS], stop_flag=stop, ready_flag=ready)), daemon=True, name="kopf")
    thread.start()
    assert ready.wait(20), "kopf did not start"
    try:
        yield reconciler
    finally:
        gates.release.set()
        stop.set()
        thread.join(30)


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (KeyError, TypeError):
            last = None
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def status(cluster: Cluster, name: str = "sd") -> dict[str, Any]:
    return dict(cluster.obj(POLICIES, NS, name).get("status") or {})


def phase_is(cluster: Cluster, phase: str, name: str = "sd") -> Callable[[], bool]:
    return lambda: status(cluster, name).get("phase") == phase


def condition(cluster: Cluster, kind: str, name: str = "sd") -> str:
    return next(c["status"] for c in status(cluster, name)["conditions"] if c["type"] == kind)


def route(cluster: Cluster, name: str = "sd") -> tuple[int, int]:
    refs = {r["name"]: r["weight"] for r in cluster.obj(
        "gateway.networking.k8s.io/v1/httproutes", NS, name)["spec"]["rules"][0][
        "backendRefs"]}
    return refs[f"{name}-blue"], refs[f"{name}-green"]


def replicas(cluster: Cluster, deployment: str) -> int:
    return int(cluster.obj("apps/v1/deployments", NS, deployment)["spec"]["replicas"])


@pytest.fixture
def fleet(kube: KubeClient) -> Iterator[KubeClient]:
    seed(kube)
    with FakeDeploymentController(kube):
        yield kube


def test_a_new_policy_is_promoted_mirrored_and_reapplying_it_is_a_no_op(
        cluster: Cluster, fleet: KubeClient, tmp_path: Path) -> None:
    gates = Gates()
    with operator(fleet, tmp_path, gates):
        fleet.create(ROLLOUT_POLICIES, NS, policy())
        wait_for("Promoted", phase_is(cluster, "Promoted"))
        wait_for("the loser scaled down", lambda: replicas(cluster, "sd-blue") == 0)
        fleet.patch(ROLLOUT_POLICIES, NS, "sd", {"spec": policy()["spec"],
                                                  "metadata": {"labels": {"team": "imaging"}}})
        time.sleep(1.5)
    assert cluster.obj(POLICIES, NS, "sd")["metadata"]["generation"] == 1
    history = ConfigMapStatusStore(fleet, NS).history("sd")
    assert [h.to_phase for h in history].count("Admitting") == 1
    st = status(cluster)
    assert gates.calls == ["admit", "analyze 0", "analyze 1"]
    assert (st["observedGeneration"], st["greenWeight"], st["blueWeight"]) == (1, 100, 0)
    assert route(cluster) == (0, 100)
    assert (condition(cluster, "Ready"), condition(cluster, "Reconciling"),
            condition(cluster, "Stalled")) == ("True", "False", "False")
    assert st["gates"] == [{"name": "p95", "verdict": "pass", "reason": "analyze 1: pass"}]
    assert st["instances"][0]["pod"] == "sd-green-0" and st["instances"][0]["node"] == "gpu-1"
    cm = cluster.obj("v1/configmaps", NS, object_name("sd"))
    owner = cluster.obj(POLICIES, NS, "sd")["metadata"]
    assert cm["metadata"]["ownerReferences"] == [{
        "apiVersion": "rollout-gates.dev/v1alpha1", "kind": "RolloutPolicy", "name": "sd",
        "uid": owner["uid"], "controller": True}]
    assert st["historyConfigMap"] == object_name("sd")
    assert "rollout-gates.dev/controller" in owner["finalizers"]


def test_a_new_generation_mid_rollout_returns_to_blue_and_restarts(
        cluster: Cluster, fleet: KubeClient, tmp_path: Path) -> None:
    gates = Gates(hold="analyze 0")
    with operator(fleet, tmp_path, gates):
        fleet.create(ROLLOUT_POLICIES, NS, policy(steps=(50, 100)))
        wait_for("analysis of step 0", lambda: "analyze 0" in gates.calls)
        assert route(cluster) == (50, 50)
        fleet.patch(ROLLOUT_POLICIES, NS, "sd", {"spec": {"steps": [{"weight": 0}]}})
        time.sleep(1)  # the watcher records the rollback while the analysis still runs
        gates.release.set()
        wait_for("generation 2 promoted", lambda: status(cluster).get("observedGeneration") == 2
                 and status(cluster)["phase"] == "Promoted")
    phases = [(h.to_phase, h.step) for h in ConfigMapStatusStore(fleet, NS).history("sd")]
    assert ("RolledBack", 0) in phases
    restarted = phases[phases.index(("RolledBack", 0)) + 1:]
    assert restarted[:3] == [("Pending", 0), ("Admitting", 0), ("Shifting", 0)]
    assert gates.calls == ["admit", "analyze 0", "admit", "analyze 0"]
    assert status(cluster)["attempt"] == 1


def test_manual_gate_waits_paused_until_promote_confirm(cluster: Cluster, fleet: KubeClient,
                                                        tmp_path: Path) -> None:
    with operator(fleet, tmp_path, Gates()):
        fleet.create(ROLLOUT_POLICIES, NS, policy(steps=(0,), auto=False))
        wait_for("Paused", phase_is(cluster, "Paused"))
        st = status(cluster)
        assert st["awaitingPromotion"] is True and route(cluster) == (100, 0)
        assert condition(cluster, "Reconciling") == "True"
        time.sleep(1)
        assert status(cluster)["phase"] == "Paused"
        ConfigMapStatusStore(fleet, NS).request("sd", "promote")
        wait_for("Promoted", phase_is(cluster, "Promoted"))
    assert route(cluster) == (0, 100) and status(cluster)["awaitingPromotion"] is False


def test_a_failed_rollout_stalls_and_retry_runs_it_again(cluster: Cluster, fleet: KubeClient,
                                                         tmp_path: Path) -> None:
    gates = Gates(PASS, FAIL)
    with operator(fleet, tmp_path, gates):
        fleet.create(ROLLOUT_POLICIES, NS, policy(steps=(0,)))
        wait_for("RolledBack", phase_is(cluster, "RolledBack"))
        assert condition(cluster, "Stalled") == "True" and condition(cluster, "Ready") == "False"
        assert route(cluster) == (100, 0)
        ConfigMapStatusStore(fleet, NS).request("sd", "retry")
        wait_for("Promoted after retry", phase_is(cluster, "Promoted"))
    st = status(cluster)
    assert st["attempt"] == 2 and condition(cluster, "Stalled") == "False"
    assert gates.calls == ["admit", "analyze 0", "admit", "analyze 0"]


def test_pause_holds_traffic_and_resume_continues(cluster: Cluster, fleet: KubeClient,
                                                  tmp_path: Path) -> None:
    gates = Gates(hold="analyze 0")
    store = ConfigMapStatusStore(fleet, NS)
    with operator(fleet, tmp_path, gates):
        fleet.create(ROLLOUT_POLICIES, NS, policy(steps=(20, 60)))
        wait_for("analysis of step 0", lambda: "analyze 0" in gates.calls)
        store.request("sd", "pause")
        gates.release.set()
        wait_for("Paused", phase_is(cluster, "Paused"))
        assert route(cluster) == (80, 20) and status(cluster)["awaitingPromotion"] is False
        time.sleep(1)
        assert route(cluster) == (80, 20) and gates.calls == ["admit", "analyze 0"]
        store.request("sd", "resume")
        wait_for("Promoted", phase_is(cluster, "Promoted"))
    assert gates.calls == ["admit", "analyze 0", "analyze 1"]


def test_abort_during_analysis_returns_all_traffic_to_blue(cluster: Cluster, fleet: KubeClient,
                                                           tmp_path: Path) -> None:
    gates = Gates(hold="analyze 0")
    with operator(fleet, tmp_path, gates):
        fleet.create(ROLLOUT_POLICIES, NS, policy(steps=(30, 100)))
        wait_for("analysis of step 0", lambda: "analyze 0" in gates.calls)
        ConfigMapStatusStore(fleet, NS).request("sd", "abort")
        gates.release.set()
        wait_for("Aborted", phase_is(cluster, "Aborted"))
        wait_for("green scaled down", lambda: replicas(cluster, "sd-green") == 0)
    assert route(cluster) == (100, 0) and status(cluster)["blueWeight"] == 100
    assert condition(cluster, "Stalled") == "True"


def test_an_invalid_spec_is_stalled_with_the_reason(cluster: Cluster, fleet: KubeClient,
                                                    tmp_path: Path) -> None:
    bad = policy()
    bad["spec"]["steps"] = [{"weight": 150}]
    with operator(fleet, tmp_path, Gates()):
        fleet.create(ROLLOUT_POLICIES, NS, bad)
        wait_for("Stalled", lambda: condition(cluster, "Stalled") == "True")
    st = status(cluster)
    assert st["reason"].startswith("InvalidSpec") and "weight" in st["reason"]
    assert route(cluster) == (100, 0)


def test_tidy_up_interrupted_by_a_restart_is_resumed(cluster: Cluster, fleet: KubeClient,
                                                     tmp_path: Path) -> None:
    with operator(fleet, tmp_path, Gates()):
        fleet.create(ROLLOUT_POLICIES, NS, policy(steps=(0,), delay=3))
        wait_for("Promoted", phase_is(cluster, "Promoted"))
    # The controller stopped during the scale-down delay: blue (now idle) still runs.
    assert replicas(cluster, "sd-blue") == 2
    store = ConfigMapStatusStore(fleet, NS)
    assert store.tidied("sd") is None
    with operator(fleet, tmp_path, Gates()):
        wait_for("blue scaled down", lambda: replicas(cluster, "sd-blue") == 0, timeout=10)
        wait_for("tidy-up recorded", lambda: store.tidied("sd") is not None)
    assert replicas(cluster, "sd-green") == 2 and route(cluster) == (0, 100)
    assert fleet.get(DEPLOYMENTS, NS, "sd-green")["metadata"]["annotations"][
        "rollout-gates.dev/role"] == "serving"
    assert fleet.get(SERVICES, NS, "sd-active")  # untouched by the gateway-api router


def test_several_rollouts_run_at_once(cluster: Cluster, fleet: KubeClient,
                                      tmp_path: Path) -> None:
    seed(fleet, prefix="txt2img")
    first, second = Gates(hold="analyze 0"), Gates(hold="analyze 0")
    with operator(fleet, tmp_path, first, by_name={"txt2img": second}):
        fleet.create(ROLLOUT_POLICIES, NS, policy("sd", steps=(10,)))
        fleet.create(ROLLOUT_POLICIES, NS, policy("txt2img", steps=(30,)))
        # Both analyses are in flight together: neither waits for the other's rollout.
        wait_for("both analysing", lambda: "analyze 0" in first.calls
                 and "analyze 0" in second.calls)
        assert (route(cluster, "sd"), route(cluster, "txt2img")) == ((90, 10), (70, 30))
        first.release.set()
        second.release.set()
        wait_for("both promoted", lambda: phase_is(cluster, "Promoted", "sd")()
                 and phase_is(cluster, "Promoted", "txt2img")())
    assert (route(cluster, "sd"), route(cluster, "txt2img")) == ((0, 100), (0, 100))


def test_deleting_the_policy_mid_analysis_aborts_before_it_goes(
        cluster: Cluster, fleet: KubeClient, tmp_path: Path) -> None:
    gates = Gates(hold="analyze 0")
    with operator(fleet, tmp_path, gates):
        fleet.create(ROLLOUT_POLICIES, NS, policy(steps=(40,)))
        wait_for("analysis of step 0", lambda: "analyze 0" in gates.calls)
        assert route(cluster) == (60, 40)
        urllib.request.urlopen(urllib.request.Request(  # what kubectl delete sends
            f"{cluster.url}{ROLLOUT_POLICIES.path(NS, 'sd')}", method="DELETE"), timeout=10)
        time.sleep(1)  # the finalizer holds the object while the daemon is asked to stop
        assert not cluster.call(lambda: cluster.api.objects[POLICIES, NS, "sd"].deleted)
        gates.release.set()
        wait_for("the object gone", lambda: cluster.call(
            lambda: cluster.api.objects[POLICIES, NS, "sd"].deleted))
    assert route(cluster) == (100, 0)
    assert ConfigMapStatusStore(fleet, NS).load("sd").phase.value == "Aborted"  # type: ignore[union-attr]
