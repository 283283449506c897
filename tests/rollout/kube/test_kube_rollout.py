"""End to end over real HTTP: the real Controller, the kubernetes platform, both routers and the
ConfigMap store against the kmock API server, with scripted gate verdicts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from apiserver import (
    GATEWAY,
    NS,
    SELECTOR,
    Cluster,
    FakeDeploymentController,
    ScriptedAnalyzer,
    make_policy,
    promote,
    seed,
)

from gates.verdict import Verdict
from rollout.errors import BadInputError, UnavailableError
from rollout.k8s.client import DEPLOYMENTS, SERVICES, KubeClient, RetryPolicy
from rollout.k8s.spec import COLOR_LABEL
from rollout.machine import Phase, Plan, RolloutStatus, Weights
from rollout.platforms.kube_store import ConfigMapStatusStore
from rollout.platforms.kubernetes import ROLE_ANNOTATION, build_kubernetes

PASS, FAIL = Verdict.PASS, Verdict.FAIL


def _selector(cluster: Cluster, service: str) -> str:
    return str(cluster.obj("v1/services", NS, service)["spec"]["selector"][COLOR_LABEL])


def _route_weights(cluster: Cluster) -> list[tuple[int, int]]:
    """Every (blue, green) split the HTTPRoute has had, in order, deduplicated."""
    def read() -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for version in cluster.api.objects["gateway.networking.k8s.io/v1/httproutes", NS,
                                           "sd"].history:
            assert version is not None
            refs = {r["name"]: r["weight"] for r in version["spec"]["rules"][0]["backendRefs"]}
            split = (refs["sd-blue"], refs["sd-green"])
            if not out or out[-1] != split:
                out.append(split)
        return out
    return list(cluster.call(read))


def _replicas(cluster: Cluster, deployment: str) -> int:
    return int(cluster.obj("apps/v1/deployments", NS, deployment)["spec"]["replicas"])


def _annotation(cluster: Cluster, deployment: str) -> str:
    return str(cluster.obj("apps/v1/deployments", NS, deployment)["metadata"]["annotations"][
        ROLE_ANNOTATION])


def test_healthy_green_switches_the_active_selector_and_swaps_roles(
        cluster: Cluster, kube: KubeClient) -> None:
    seed(kube)
    with FakeDeploymentController(kube):
        final = promote(kube, make_policy(SELECTOR), ScriptedAnalyzer(PASS, PASS))
    assert final.phase is Phase.PROMOTED
    assert _selector(cluster, "sd-active") == "green"
    assert _replicas(cluster, "sd-green") == 2  # scaled up to blue's size before analysis
    assert _replicas(cluster, "sd-blue") == 0   # the old slot freed its GPUs
    assert _annotation(cluster, "sd-green") == "serving"
    assert _selector(cluster, "sd-preview") == "blue"  # preview follows the idle slot
    history = ConfigMapStatusStore(kube, NS).history("sd")
    assert [h.to_phase for h in history][-2:] == ["Promoting", "Promoted"]

    # The next release goes to the idle blue slot: roles are read from the cluster.
    with FakeDeploymentController(kube):
        again = promote(kube, make_policy(SELECTOR), ScriptedAnalyzer(PASS, PASS))
    assert again.phase is Phase.PROMOTED
    assert _selector(cluster, "sd-active") == "blue"
    assert _replicas(cluster, "sd-green") == 0


def test_degraded_green_is_rolled_back_and_scaled_down(cluster: Cluster,
                                                       kube: KubeClient) -> None:
    seed(kube)
    with FakeDeploymentController(kube):
        final = promote(kube, make_policy(SELECTOR), ScriptedAnalyzer(PASS, FAIL))
    assert final.phase is Phase.ROLLED_BACK
    assert "step 0 analysis fail" in final.reason
    assert _selector(cluster, "sd-active") == "blue"
    assert _replicas(cluster, "sd-blue") == 2
    assert _replicas(cluster, "sd-green") == 0
    assert _annotation(cluster, "sd-blue") == "serving"


def test_gateway_weights_follow_the_steps_then_promote(cluster: Cluster,
                                                       kube: KubeClient) -> None:
    seed(kube)
    with FakeDeploymentController(kube):
        final = promote(kube, make_policy(GATEWAY, steps=(0, 25, 50)),
                        ScriptedAnalyzer(PASS, PASS, PASS, PASS))
    assert final.phase is Phase.PROMOTED
    assert final.weights == Weights(blue=0, green=100)
    assert _route_weights(cluster) == [(100, 0), (75, 25), (50, 50), (0, 100)]


def test_gateway_degraded_step_returns_all_traffic_to_blue(cluster: Cluster,
                                                           kube: KubeClient) -> None:
    seed(kube)
    with FakeDeploymentController(kube):
        final = promote(kube, make_policy(GATEWAY, steps=(0, 25, 50)),
                        ScriptedAnalyzer(PASS, PASS, FAIL))
    assert final.phase is Phase.ROLLED_BACK
    assert _route_weights(cluster) == [(100, 0), (75, 25), (100, 0)]


@pytest.mark.parametrize("fault", [{"status": 503}, {"delay": 0.8}], ids=["503", "timeout"])
def test_api_errors_on_a_shift_are_retried_then_fail_safe_on_blue(
        cluster: Cluster, tmp_path: Path, fault: dict[str, Any]) -> None:
    sleeps: list[float] = []
    kube = cluster.client(tmp_path, RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05,
                                                request_timeout=0.4))
    kube.sleep = sleeps.append
    seed(kube)
    # The first shift (25 %) goes through; every attempt of the second (50 %) fails.
    cluster.fault("PATCH", "/httproutes/sd$", after=1, times=3, **fault)
    with FakeDeploymentController(kube):
        final = promote(kube, make_policy(GATEWAY, steps=(25, 50)), ScriptedAnalyzer(PASS, PASS))
    assert final.phase is Phase.ROLLED_BACK
    reason = ConfigMapStatusStore(kube, NS).history("sd")[-2].reason
    assert "traffic shift to blue=50 green=50 not applied: UnavailableError" in reason
    assert "gave up after 3 attempts" in reason
    assert _route_weights(cluster) == [(100, 0), (75, 25), (100, 0)]
    # 1 shift, 3 attempts of the failing one, 1 rollback.
    assert cluster.requests("PATCH", "/httproutes/sd$") == 5
    assert len(sleeps) == 2 and all(0.005 <= s <= 0.05 for s in sleeps)


def test_resumed_rollout_keeps_its_roles_after_traffic_moved(cluster: Cluster,
                                                             kube: KubeClient) -> None:
    """A controller that died after the switch must not take green for the serving slot."""
    seed(kube)
    policy = make_policy(SELECTOR)
    platform, store, router = build_kubernetes(policy, client=kube)
    with FakeDeploymentController(kube):
        platform.wait_ready("green", timeout=5)
    status = RolloutStatus(name="sd", plan=Plan(weights=(0,)), phase=Phase.PROMOTING)
    store.save(status, previous=None)
    router.set_weights(Weights(blue=0, green=100))  # ...and the controller died here
    _, _, resumed = build_kubernetes(policy, client=kube)
    assert resumed.get_weights() == Weights(blue=0, green=100)


def test_endpoints_are_the_ready_pods_of_each_slot(kube: KubeClient) -> None:
    seed(kube)
    platform, _, _ = build_kubernetes(make_policy(SELECTOR), client=kube)
    assert platform.endpoints("blue") == ["http://127.0.10.1:8000", "http://127.0.10.2:8000"]
    assert platform.endpoints("green") == ["http://127.0.20.1:8000", "http://127.0.20.3:8000"]


def test_green_that_never_becomes_available_times_out_with_the_reason(
        kube: KubeClient) -> None:
    seed(kube)
    platform, _, _ = build_kubernetes(make_policy(SELECTOR), client=kube)
    started = time.monotonic()
    with FakeDeploymentController(kube, stuck=frozenset({"sd-green"})), \
            pytest.raises(UnavailableError, match=r"sd-green not ready after 1s: 0 of 2 updated"
                                                  r" replicas available"):
        platform.wait_ready("green", timeout=1)
    assert time.monotonic() - started < 4


def test_misconfigured_targets_fail_before_any_change(cluster: Cluster,
                                                      kube: KubeClient) -> None:
    seed(kube)
    kube.patch(DEPLOYMENTS, NS, "sd-green", {"spec": {"template": {"metadata": {"labels": {
        COLOR_LABEL: "blue"}}}}})
    platform, _, router = build_kubernetes(make_policy(SELECTOR), client=kube)
    with pytest.raises(BadInputError, match=r"must label its pods rollout-gates.dev/color=green"):
        platform.check()
    kube.patch(SERVICES, NS, "sd-active", {"spec": {"selector": {COLOR_LABEL: None}}})
    with pytest.raises(BadInputError, match=r"must select pods by rollout-gates\.dev/color"):
        build_kubernetes(make_policy(SELECTOR), client=kube)
    with pytest.raises(BadInputError, match="moves all traffic at once"):
        router.set_weights(Weights(blue=50, green=50))

