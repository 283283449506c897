"""The ConfigMap status store and the Lease lock against the kmock API server."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from apiserver import NS, Cluster, ScriptedAnalyzer

from gates.verdict import Verdict
from rollout.controller import Controller
from rollout.errors import LockedError, StateConflictError
from rollout.k8s.client import CONFIG_MAPS, LEASES, KubeClient, PatchType, Resource
from rollout.machine import Phase, Plan, RolloutStatus
from rollout.platforms import kube_store
from rollout.platforms.kube_store import ConfigMapStatusStore
from rollout.routers.none import NoneRouter

CM = ("v1/configmaps", NS, "rollout-sd")


@dataclass
class InterleavingClient(KubeClient):
    """Runs ``before_patch`` (another process's write) right before our next ConfigMap patch,
    so that patch carries a resourceVersion that is already stale on the server."""

    before_patch: list[Any] = field(default_factory=list)

    def patch(self, res: Resource, namespace: str, name: str, body: Any, *,
              patch_type: PatchType = "merge", subresource: str | None = None) -> Any:
        if res is CONFIG_MAPS and self.before_patch:
            self.before_patch.pop(0)()
        return super().patch(res, namespace, name, body, patch_type=patch_type,
                             subresource=subresource)


def _start(store: ConfigMapStatusStore, weights: tuple[int, ...] = (0,)) -> RolloutStatus:
    s = RolloutStatus(name="sd", plan=Plan(weights=weights))
    store.save(s, previous=None)
    return s


def _next(s: RolloutStatus, phase: Phase) -> RolloutStatus:
    return s.model_copy(update={"generation": s.generation + 1, "phase": phase})


def test_behaves_like_the_sqlite_store(kube: KubeClient) -> None:
    store = ConfigMapStatusStore(kube, NS)
    assert store.load("sd") is None
    s = _start(store)
    with pytest.raises(StateConflictError, match="already exists"):
        store.save(s.model_copy(update={"reason": "other"}), previous=None)
    newer = _next(s, Phase.ADMITTING)
    store.save(newer, previous=s, evidence={"why": "test"})
    with pytest.raises(StateConflictError, match="changed since generation 0"):
        store.save(_next(newer, Phase.SHIFTING), previous=s)
    assert store.load("sd") == newer
    assert [(h.generation, h.from_phase, h.to_phase) for h in store.history("sd")] == [
        (0, None, "Pending"), (1, "Pending", "Admitting")]
    assert store.history("sd")[1].evidence == {"why": "test"}

    store.request("sd", "abort")
    store.request("sd", "resume")
    folded, ids = store.pending_intents(newer)
    assert folded.abort_requested and folded.resume_requested and ids == [0, 1]
    store.save(_next(folded, Phase.ROLLING_BACK), previous=newer, consumed=[0])
    assert store.pending_intents(newer)[1] == [1]  # consumed in the same patch as the status
    store.delete("sd")
    assert store.load("sd") is None and len(store.history("sd")) == 3


def test_409_on_a_status_write_is_answered_by_re_reading(cluster: Cluster,
                                                        kube: KubeClient) -> None:
    """A user's abort lands between our read and our write: the server refuses our stale
    write (409), we re-read, see the status is still ours, write again, and the abort is
    neither lost nor consumed, so the controller re-decides with it at its next step."""
    racing = InterleavingClient(api=kube.api, retry=kube.retry)
    store = ConfigMapStatusStore(racing, NS)
    other = ConfigMapStatusStore(kube, NS)
    s = _start(store, weights=(0, 50))
    racing.before_patch.append(lambda: other.request("sd", "abort"))
    patches = cluster.requests("PATCH", "/configmaps/rollout-sd$")
    final = Controller(store, NoneRouter(), ScriptedAnalyzer(Verdict.PASS)).run(s)
    # the abort, 2 for the raced save (the 409 and its retry), 2 more saves
    assert cluster.requests("PATCH", "/configmaps/rollout-sd$") - patches == 5
    assert final.phase is Phase.ABORTED
    phases = [h.to_phase for h in store.history("sd")]
    assert phases == ["Pending", "Admitting", "RollingBack", "Aborted"]
    assert store.history("sd")[2].reason == "aborted by user"
    assert store.pending_intents(final)[1] == []


def test_a_write_whose_answer_was_lost_is_not_recorded_twice(cluster: Cluster,
                                                            kube: KubeClient) -> None:
    store = ConfigMapStatusStore(kube, NS)
    s = _start(store)
    cluster.fault("PATCH", "/configmaps/rollout-sd$", delay=0.8, apply=True)  # > timeout 0.5
    newer = _next(s, Phase.ADMITTING)
    store.save(newer, previous=s)
    assert store.load("sd") == newer
    assert [h.generation for h in store.history("sd")] == [0, 1]


def test_history_is_trimmed_to_fit_a_configmap(cluster: Cluster, kube: KubeClient,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_store, "MAX_BYTES", 6000)
    store = ConfigMapStatusStore(kube, NS)
    s = _start(store)
    for _ in range(8):
        nxt = _next(s, Phase.PAUSED)
        store.save(nxt, previous=s, evidence={"samples": "x" * 1500})
        s = nxt
    data = cluster.obj(*CM)["data"]
    assert sum(len(k) + len(v) for k, v in data.items()) <= 6000
    history = store.history("sd")
    assert history[-1].generation == 8 and history[-1].evidence == {"samples": "x" * 1500}
    assert {"trimmed": True} in [h.evidence for h in history]
    assert [h.generation for h in history] == sorted(h.generation for h in history)


def _lease(cluster: Cluster) -> dict[str, Any]:
    return dict(cluster.obj("coordination.k8s.io/v1/leases", NS, "rollout-sd")["spec"])


def _hold(kube: KubeClient, holder: str, duration: int, renewed: float) -> None:
    kube.create(LEASES, NS, {"metadata": {"name": "rollout-sd"}, "spec": {
        "holderIdentity": holder, "leaseDurationSeconds": duration, "leaseTransitions": 0,
        "renewTime": kube_store._micro_time(renewed)}})


def test_lease_held_by_another_holder_exits_with_a_clear_message(kube: KubeClient) -> None:
    _hold(kube, "ci-runner-7/pid-42", 30, time.time())
    store = ConfigMapStatusStore(kube, NS, identity="me")
    with pytest.raises(LockedError) as err, store.lock("sd"):
        pass
    message = str(err.value)
    assert "rollout 'sd' is locked by ci-runner-7/pid-42" in message
    assert "Lease sd/rollout-sd" in message and "expires in 30s" in message


def test_lease_is_waited_for_then_taken_over_when_it_expires(cluster: Cluster,
                                                             kube: KubeClient) -> None:
    _hold(kube, "dead-controller", 1, time.time())
    store = ConfigMapStatusStore(kube, NS, identity="me", lock_wait=5, lease_duration=3)
    started = time.monotonic()
    with store.lock("sd"):
        waited = time.monotonic() - started
        spec = _lease(cluster)
        assert spec["holderIdentity"] == "me" and spec["leaseTransitions"] == 1
    assert 0.5 < waited < 3
    assert "holderIdentity" not in _lease(cluster)  # released on exit


def test_lease_is_renewed_and_a_lost_lease_stops_writes(cluster: Cluster,
                                                        kube: KubeClient) -> None:
    store = ConfigMapStatusStore(kube, NS, identity="me", lease_duration=0.3)
    s = _start(store)
    with store.lock("sd"):
        first = _lease(cluster)["renewTime"]
        time.sleep(0.25)
        assert _lease(cluster)["renewTime"] > first
        kube.patch(LEASES, NS, "rollout-sd", {"spec": {"holderIdentity": "usurper"}})
        time.sleep(0.25)
        with pytest.raises(LockedError, match="lost the Lease sd/rollout-sd to usurper"):
            store.save(_next(s, Phase.ADMITTING), previous=s)
    assert _lease(cluster)["holderIdentity"] == "usurper"  # not ours to release
    assert store.load("sd") == s


def test_status_configmap_is_readable_json(cluster: Cluster, kube: KubeClient) -> None:
    store = ConfigMapStatusStore(kube, NS)
    _start(store)
    cm = cluster.obj(*CM)
    assert cm["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "rollout-gates"}
    assert json.loads(cm["data"]["status"])["phase"] == "Pending"


def test_two_stores_one_rollout_only_one_proceeds(tmp_path: Path, cluster: Cluster) -> None:
    a = ConfigMapStatusStore(cluster.client(tmp_path), NS, identity="a")
    b = ConfigMapStatusStore(cluster.client(tmp_path), NS, identity="b")
    with a.lock("sd"), pytest.raises(LockedError, match="locked by a "), b.lock("sd"):
        pass
    with b.lock("sd"):  # a released it: no waiting for expiry
        assert _lease(cluster)["holderIdentity"] == "b"
