"""Rollout state in the cluster: the status in a ConfigMap, the single-writer lock in a Lease.

Why in the cluster: a controller run as a Job or a CI step has no disk that outlives it, and
whoever runs next (another pipeline, a person with ``rollout status``) must see the same
status. Why a ConfigMap: it needs no CRD (installing one needs cluster-admin), RBAC can limit
us to exactly one by name, and ``kubectl get cm rollout-NAME -o yaml`` is a readable status.

It behaves like the SQLite :class:`~rollout.store.StateStore`:

* ``data.status`` is the :class:`~rollout.machine.RolloutStatus` JSON; ``data.t-00000007``
  the transition records (history), ``data.i-00000003`` the unconsumed user intents. A save
  writes status, its transition and the consumed intents in **one** patch, so the history
  can never disagree with the status and a crash in between loses no abort.
* Optimistic concurrency twice over: every patch carries the ConfigMap's ``resourceVersion``
  (the API server answers 409 if anything changed since we read it), and a 409 is answered
  by re-reading and re-deciding. If only *other* keys changed (a user's intent arrived), the
  write is retried on the fresh object; if the status generation moved on, that is another
  writer and :class:`~rollout.errors.StateConflictError` is raised, as SQLite does. A write
  whose answer was lost (timeout) and which is retried finds its own status already there and
  counts as done.
* The lock is a ``coordination.k8s.io/v1`` Lease, as Kubernetes' own controllers use: held
  while ``renewTime + leaseDurationSeconds`` is in the future, renewed by a background thread
  every third of the duration, taken over once expired (a killed controller leaves no stale
  lock for longer than the duration), released on exit. A holder that cannot renew for a whole
  duration has lost the lock, and its next ``save`` raises LockedError instead of writing.
  Another holder means: wait up to ``lock_wait`` seconds, then LockedError naming it.

The ConfigMap is kept under 1 MiB (the API server's limit): when the history grows past
:data:`MAX_BYTES` the evidence of the oldest transitions is dropped first, then the oldest
transitions themselves.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from rollout.errors import (
    LockedError,
    NotFoundError,
    RolloutError,
    StateConflictError,
    TemporaryError,
)
from rollout.k8s.client import CONFIG_MAPS, LEASES, Json, KubeClient
from rollout.machine import RolloutStatus
from rollout.store import INTENT_FLAGS, Intent, TransitionRecord

__all__ = ["MAX_BYTES", "ConfigMapStatusStore", "HeldLease", "object_name"]

STATUS_KEY = "status"
#: The store generation of the finished run whose tidy-up (role swap, scale-down) completed.
TIDIED_KEY = "tidied"
_TRANSITION = "t-"
_INTENT = "i-"
#: Bytes of ``data`` we allow ourselves (the API server refuses objects over 1 MiB).
MAX_BYTES = 900_000
_CONFLICT_RETRIES = 8
_MANAGED_BY = {"app.kubernetes.io/managed-by": "rollout-gates"}


def object_name(rollout: str) -> str:
    """Name of the ConfigMap and of the Lease of ``rollout`` (RBAC names them)."""
    return f"rollout-{rollout}"


def _key(prefix: str, index: int) -> str:
    return f"{prefix}{index:08d}"


def _indexed(data: Mapping[str, str], prefix: str) -> list[tuple[int, str]]:
    return sorted((int(k[len(prefix):]), k) for k in data if k.startswith(prefix)
                  and k[len(prefix):].isdigit())


def _micro_time(t: float) -> str:
    """Kubernetes ``MicroTime``."""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: Any) -> float | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _default_identity() -> str:
    return f"{socket.gethostname()}/pid-{os.getpid()}/{uuid.uuid4().hex[:6]}"


@dataclass
class HeldLease:
    """A Lease we hold, and what the renewal thread found out about it.

    ``lost`` says why it is no longer ours (None while it is); ``lost_event`` is set at the
    same moment, so a holder can block on it instead of polling (the leader election does).
    """

    lease: str
    stop: threading.Event = field(default_factory=threading.Event)
    lost: str | None = None
    lost_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def lose(self, why: str) -> None:
        """Record that the Lease is gone (the renewal thread stops after this)."""
        self.lost = why
        self.lost_event.set()


@dataclass
class ConfigMapStatusStore:
    """:class:`~rollout.platforms.base.StatusStore` on a ConfigMap and a Lease per rollout.

    Args:
        client: the API client (its retries cover 5xx and timeouts).
        namespace: where the ConfigMaps and Leases live (the controller's namespace).
        identity: our name in the Lease (host/pid/random by default).
        lease_duration: seconds a Lease stays ours without renewal.
        lock_wait: seconds to wait for another holder before LockedError.
        clock, sleep: injectable for tests.
    """

    client: KubeClient
    namespace: str
    identity: str = field(default_factory=_default_identity)
    lease_duration: float = 15.0
    lock_wait: float = 0.0
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    _held: dict[str, HeldLease] = field(default_factory=dict, init=False, repr=False)

    # -- status, history, intents ---------------------------------------------------------

    def load(self, name: str) -> RolloutStatus | None:
        """The persisted status of ``name``, or None if it was never started (or deleted)."""
        raw = self._data(name).get(STATUS_KEY)
        return RolloutStatus.model_validate_json(raw) if raw else None

    def save(self, status: RolloutStatus, *, previous: RolloutStatus | None,
             evidence: dict[str, Any] | None = None, consumed: list[int] | None = None) -> None:
        """Persist ``status``, its transition record and the consumed intents in one patch.

        Raises:
            StateConflictError: another writer changed the status since ``previous``.
            LockedError: we held the Lease of this rollout and lost it.
        """
        held = self._held.get(status.name)
        if held is not None and held.lost:
            raise LockedError(f"rollout {status.name!r}: {held.lost}; not writing")
        record = json.dumps({
            "generation": status.generation,
            "from_phase": previous.phase.value if previous else None,
            "to_phase": status.phase.value, "step": status.step, "reason": status.reason,
            "evidence": evidence or {}, "at": self.clock()}, default=str)

        def decide(data: dict[str, str]) -> dict[str, str | None]:
            raw = data.get(STATUS_KEY)
            stored = RolloutStatus.model_validate_json(raw) if raw else None
            if stored == status:
                return {}  # our own write, whose answer was lost and which was retried
            if previous is None and stored is not None:
                raise StateConflictError(f"rollout {status.name!r} already exists")
            if previous is not None and (stored is None
                                         or stored.generation != previous.generation):
                now = stored.generation if stored else "deleted"
                raise StateConflictError(f"rollout {status.name!r} changed since generation "
                                         f"{previous.generation} (now {now})")
            transitions = _indexed(data, _TRANSITION)
            nxt = transitions[-1][0] + 1 if transitions else 0
            changes: dict[str, str | None] = {STATUS_KEY: status.model_dump_json(),
                                              _key(_TRANSITION, nxt): record}
            changes.update({_key(_INTENT, i): None for i in consumed or []
                            if _key(_INTENT, i) in data})
            return _fit(data, changes)

        self._update(status.name, decide)

    def delete(self, name: str) -> None:
        """Forget a finished rollout's status so the name can be promoted again (the history
        stays, as in the SQLite store)."""
        self._update(name, lambda data: {STATUS_KEY: None} if STATUS_KEY in data else {})

    def tidied(self, name: str) -> int | None:
        """The store generation of the last finished run whose tidy-up completed, if any."""
        raw = self._data(name).get(TIDIED_KEY)
        return int(raw) if raw and raw.isdigit() else None

    def mark_tidied(self, name: str, generation: int) -> None:
        """Record that the tidy-up of the finished run at store ``generation`` completed, so a
        restarted controller does not swap roles or scale down a second time."""
        self._update(name, lambda data: {} if data.get(TIDIED_KEY) == str(generation)
                     else {TIDIED_KEY: str(generation)})

    def set_owner(self, name: str, owner: Json) -> None:
        """Make ``owner`` (an ownerReference) the controller of the ConfigMap of ``name``, so
        the cluster deletes the decision trail with the RolloutPolicy it belongs to."""
        cm = self._get(name)
        if cm is None or (cm.get("metadata") or {}).get("ownerReferences") == [owner]:
            return
        self.client.patch(CONFIG_MAPS, self.namespace, object_name(name),
                          {"metadata": {"ownerReferences": [owner]}})

    def history(self, name: str) -> list[TransitionRecord]:
        """Every recorded transition of ``name`` in order (all runs of that name)."""
        data = self._data(name)
        out = []
        for _, key in _indexed(data, _TRANSITION):
            r = json.loads(data[key])
            out.append(TransitionRecord(r["generation"], r["from_phase"], r["to_phase"],
                                        r["step"], r["reason"], r["evidence"], r["at"]))
        return out

    def request(self, name: str, intent: Intent) -> None:
        """Record a user's intent; the controller folds it in at its next step."""
        def add(data: dict[str, str]) -> dict[str, str | None]:
            intents = _indexed(data, _INTENT)
            nxt = intents[-1][0] + 1 if intents else 0
            return {_key(_INTENT, nxt): json.dumps({"kind": intent, "at": self.clock()})}

        self._update(name, add)

    def pending_intents(self, status: RolloutStatus) -> tuple[RolloutStatus, list[int]]:
        """``status`` with unconsumed intents folded in as flags, and those intents' ids."""
        data = self._data(status.name)
        intents = [(i, json.loads(data[k])["kind"]) for i, k in _indexed(data, _INTENT)]
        if not intents:
            return status, []
        flags = {INTENT_FLAGS[kind]: True for _, kind in intents}
        return status.model_copy(update=flags), [i for i, _ in intents]

    def _data(self, name: str) -> dict[str, str]:
        cm = self._get(name)
        return dict((cm or {}).get("data") or {})

    def _get(self, name: str) -> Json | None:
        try:
            return self.client.get(CONFIG_MAPS, self.namespace, object_name(name))
        except NotFoundError:
            return None

    def _update(self, name: str, decide: Callable[[dict[str, str]], dict[str, str | None]]
                ) -> None:
        """Read, decide the changes, write them guarded by the read's resourceVersion; on a
        409, read and decide again (``decide`` may raise StateConflictError itself)."""
        for _ in range(_CONFLICT_RETRIES):
            cm = self._get(name)
            changes = decide(dict((cm or {}).get("data") or {}))
            if not changes:
                return
            try:
                if cm is None:
                    self.client.create(CONFIG_MAPS, self.namespace, {
                        "metadata": {"name": object_name(name), "labels": _MANAGED_BY},
                        "data": {k: v for k, v in changes.items() if v is not None}})
                else:
                    self.client.patch(CONFIG_MAPS, self.namespace, object_name(name), {
                        "metadata": {"resourceVersion": cm["metadata"]["resourceVersion"]},
                        "data": changes})
                return
            except StateConflictError:
                continue  # 409: somebody wrote in between; re-read and re-decide
        raise StateConflictError(f"ConfigMap {self.namespace}/{object_name(name)} changed "
                                 f"under us {_CONFLICT_RETRIES} times in a row")

    # -- the Lease ---------------------------------------------------------------------------

    def lock(self, name: str) -> AbstractContextManager[None]:
        """Hold the Lease of rollout ``name`` while the body runs (renewed in the background).

        Raises:
            LockedError: another holder kept it for ``lock_wait`` seconds; names the holder.
        """
        return self._locked(name)

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        with self.hold(object_name(name), what=f"rollout {name!r}") as held:
            self._held[name] = held
            try:
                yield
            finally:
                del self._held[name]

    @contextmanager
    def hold(self, lease_name: str, *, what: str) -> Iterator[HeldLease]:
        """Hold the Lease ``lease_name`` while the body runs, renewed every third of
        ``lease_duration``, released at the end (``what`` names it in messages). The leader
        election of the in-cluster controller uses it with ``lock_wait=inf``.

        Raises:
            LockedError: another holder kept it for ``lock_wait`` seconds; names the holder.
        """
        held = HeldLease(lease_name)
        self._acquire(what, held.lease)
        held.thread = threading.Thread(target=self._renew_loop, args=(held,), daemon=True,
                                       name=f"lease-{held.lease}")
        held.thread.start()
        try:
            yield held
        finally:
            held.stop.set()
            held.thread.join()
            self._release(held.lease)

    def _acquire(self, what: str, lease_name: str) -> None:
        started = self.clock()
        while True:
            lease = self._lease(lease_name)
            spec = (lease or {}).get("spec") or {}
            holder = spec.get("holderIdentity")
            now = self.clock()
            expires = self._expiry(spec)
            if not holder or holder == self.identity or expires <= now:
                try:
                    self._take(lease_name, lease, spec, now)
                    return
                except StateConflictError:
                    continue  # another candidate moved first: look again
            waited = now - started
            if waited >= self.lock_wait:
                renewed = _parse_time(spec.get("renewTime")) or now
                raise LockedError(
                    f"{what} is locked by {holder} (Lease {self.namespace}/"
                    f"{lease_name}: renewed {now - renewed:.0f}s ago, expires in "
                    f"{expires - now:.0f}s unless renewed); waited {waited:.0f}s. Another "
                    f"controller is acting on this rollout: let it finish, or wait until the "
                    f"Lease expires if it died")
            self.sleep(max(0.05, min(1.0, self.lock_wait - waited, expires - now)))

    def _take(self, lease_name: str, lease: Json | None, spec: Json, now: float) -> None:
        holder = spec.get("holderIdentity")
        transitions = int(spec.get("leaseTransitions") or 0)
        new_spec = {"holderIdentity": self.identity, "acquireTime": _micro_time(now),
                    "renewTime": _micro_time(now),
                    "leaseDurationSeconds": max(1, round(self.lease_duration)),
                    "leaseTransitions": transitions + (1 if holder and holder != self.identity
                                                       else 0)}
        if lease is None:
            self.client.create(LEASES, self.namespace, {
                "metadata": {"name": lease_name, "labels": _MANAGED_BY}, "spec": new_spec})
        else:
            self.client.patch(LEASES, self.namespace, lease_name, {
                "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": new_spec})

    def _renew_loop(self, held: HeldLease) -> None:
        last = self.clock()
        while not held.stop.wait(self.lease_duration / 3):
            try:
                lease = self._lease(held.lease)
                spec = (lease or {}).get("spec") or {}
                if lease is None or spec.get("holderIdentity") != self.identity:
                    held.lose(f"lost the Lease {self.namespace}/{held.lease} to "
                              f"{spec.get('holderIdentity') or 'nobody (deleted)'}")
                    return
                self.client.patch(LEASES, self.namespace, held.lease, {
                    "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": {"renewTime": _micro_time(self.clock())}})
                last = self.clock()
            except (TemporaryError, StateConflictError) as e:
                if self.clock() - last > self.lease_duration:
                    held.lose(f"could not renew the Lease {self.namespace}/{held.lease} for "
                              f"{self.lease_duration:.0f}s ({e})")
                    return
            except RolloutError as e:  # 403 and the like: renewing again cannot help
                held.lose(f"cannot renew the Lease {self.namespace}/{held.lease}: {e}")
                return

    def _release(self, lease_name: str) -> None:
        """Give the Lease up so the next controller need not wait for it to expire. A release
        that fails is harmless: the Lease expires by itself."""
        for _ in range(3):
            try:
                lease = self._lease(lease_name)
                spec = (lease or {}).get("spec") or {}
                if lease is None or spec.get("holderIdentity") != self.identity:
                    return
                self.client.patch(LEASES, self.namespace, lease_name, {
                    "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": {"holderIdentity": None, "renewTime": _micro_time(self.clock())}})
                return
            except StateConflictError:
                continue
            except TemporaryError:
                return

    def _lease(self, lease_name: str) -> Json | None:
        try:
            return self.client.get(LEASES, self.namespace, lease_name)
        except NotFoundError:
            return None

    def _expiry(self, spec: Json) -> float:
        renewed = _parse_time(spec.get("renewTime")) or _parse_time(spec.get("acquireTime"))
        if renewed is None:
            return 0.0
        return renewed + float(spec.get("leaseDurationSeconds") or 0)


def _fit(data: Mapping[str, str], changes: dict[str, str | None]) -> dict[str, str | None]:
    """``changes`` plus what must go so the ConfigMap stays under :data:`MAX_BYTES`."""
    merged = {k: v for k, v in {**data, **changes}.items() if v is not None}
    size = sum(len(k) + len(v.encode()) for k, v in merged.items())
    oldest_first = _indexed(merged, _TRANSITION)[:-1]  # never trim the record being written
    for _, key in oldest_first:
        if size <= MAX_BYTES:
            break
        record = json.loads(merged[key])
        if record.get("evidence") != {"trimmed": True}:
            record["evidence"] = {"trimmed": True}
            slim = json.dumps(record)
            size -= len(merged[key].encode()) - len(slim.encode())
            merged[key] = changes[key] = slim
    for _, key in oldest_first:
        if size <= MAX_BYTES:
            break
        size -= len(key) + len(merged.pop(key).encode())
        changes[key] = None
    return changes
