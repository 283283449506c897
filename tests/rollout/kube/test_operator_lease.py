"""Leader election on a real Lease (kmock over HTTP), the probes, and the pause intent."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from apiserver import NS, Cluster

from rollout.k8s.client import LEASES, KubeClient
from rollout.local.processes import free_port
from rollout.machine import Observation, Phase, Plan, RolloutStatus, decide
from rollout.operator.health import Health, serve_health
from rollout.operator.leader import lead


def test_a_standby_blocks_until_the_leader_releases(kube: KubeClient) -> None:
    order: list[str] = []
    with lead(kube, NS, "rollout-controller", identity="a", duration=3):
        def standby() -> None:
            with lead(kube, NS, "rollout-controller", identity="b", duration=3):
                order.append("b leads")
        t = threading.Thread(target=standby)
        t.start()
        time.sleep(1.5)
        order.append("a releases")
    t.join(10)
    assert order == ["a releases", "b leads"]


def test_a_dead_leader_is_replaced_once_its_lease_expires(kube: KubeClient) -> None:
    # A leader killed -9 leaves its Lease renewed a moment ago (whole seconds here) and never
    # released.
    now = time.time()
    kube.create(LEASES, NS, {"metadata": {"name": "rollout-controller"}, "spec": {
        "holderIdentity": "dead", "leaseDurationSeconds": 2,
        "renewTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(now))}})
    with lead(kube, NS, "rollout-controller", identity="b", duration=2):
        took = time.time() - now
        spec = kube.get(LEASES, NS, "rollout-controller")["spec"]
    assert 1.0 <= took < 5 and spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1


def test_a_leader_learns_it_lost_the_lease(kube: KubeClient) -> None:
    with lead(kube, NS, "rollout-controller", identity="a", duration=3) as held:
        kube.patch(LEASES, NS, "rollout-controller", {"spec": {"holderIdentity": "thief"}})
        assert held.lost_event.wait(5)
        assert held.lost is not None and "thief" in held.lost


def test_probes_answer_as_the_role_changes(cluster: Cluster, tmp_path: Path) -> None:
    health = Health()
    port = free_port()
    server = serve_health(health, port, host="127.0.0.1")

    def get(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return e.code
    try:
        assert (get("/healthz"), get("/readyz")) == (200, 503)
        health.role = "standby"
        assert (get("/healthz"), get("/readyz")) == (200, 200)
        health.role = "leader"
        assert get("/readyz") == 503
        health.synced.set()
        assert get("/readyz") == 200
        health.failed = "lost the Lease"
        assert (get("/healthz"), get("/readyz"), get("/nope")) == (500, 503, 404)
    finally:
        server.shutdown()


def test_pause_takes_effect_where_the_rollout_goes_next() -> None:
    s = RolloutStatus(name="sd", plan=Plan(weights=(10, 50)), phase=Phase.ANALYZING,
                      pause_requested=True)
    from gates.gate import GateResult
    from gates.verdict import Verdict

    passed = Observation(gates={"p95": GateResult(Verdict.PASS, "ok")})
    paused = decide(s, passed).status
    assert (paused.phase, paused.paused_from, paused.step) == (Phase.PAUSED, Phase.SHIFTING, 1)
    assert not paused.pause_requested
    resumed = decide(paused.model_copy(update={"resume_requested": True}), Observation()).status
    assert (resumed.phase, resumed.step) == (Phase.SHIFTING, 1)
    failed = decide(s, Observation(gates={"p95": GateResult(Verdict.FAIL, "slow")})).status
    assert failed.phase is Phase.ROLLING_BACK  # a pause never delays a rollback
    last = s.model_copy(update={"step": 1})
    assert decide(last, passed).status.phase is Phase.PROMOTING  # nothing left to hold


def test_retry_flag_never_outlives_a_transition() -> None:
    s = RolloutStatus(name="sd", plan=Plan(weights=(0,)), phase=Phase.PENDING,
                      retry_requested=True)
    assert decide(s, Observation()).status.retry_requested is False
