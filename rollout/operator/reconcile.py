"""One RolloutPolicy, reconciled: level-triggered, idempotent, through the engine.

Why level-triggered: the controller may be killed at any instant (a node drains, the leader
changes) and the next one knows nothing but what the cluster holds: the RolloutPolicy (the
wanted spec, its ``metadata.generation``) and the ConfigMap status store (the run, its
trail, the user's intents). Every pass therefore reads both and does the one thing they call
for, whoever did the previous pass:

==========================================  ==============================================
store status                                pass
==========================================  ==============================================
none                                        start a run (step 0, blue at 100 %)
unfinished, of the current generation       resume it (the engine re-runs the current
                                            phase's idempotent action)
unfinished, of an older generation          record a rollback, drive it back to blue; the
                                            next pass starts the new generation (Flagger #30)
finished, of an older generation            start a run of the new generation
finished RolledBack/Aborted + ``retry``     start a new run, attempt + 1
finished, tidy-up not recorded              swap roles / scale the loser down after
                                            ``scaleDownDelaySeconds`` counted from the end
                                            of the run (so a restart does not wait again)
finished, tidied                            nothing: wait for a new generation or intent
==========================================  ==============================================

Every transition is mirrored into ``.status`` as it happens (see :mod:`.status`), and every
pass mirrors the stored status again, so a status write lost with a dead leader is repaired.
Re-applying the same spec changes no ``generation``, so it is a no-op.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rollout.engine import Callbacks, Engine, begin, build
from rollout.errors import PermanentError, RolloutError
from rollout.k8s.client import ROLLOUT_POLICIES, Json, KubeClient
from rollout.k8s.resource import ConditionStatus, RolloutPolicyStatus
from rollout.machine import Observation, Phase, RolloutStatus
from rollout.operator.status import project, rfc3339
from rollout.platforms.kube_store import ConfigMapStatusStore, object_name
from rollout.policy.issues import PolicyError
from rollout.policy.models import API_VERSION, Metadata, RolloutPolicy

__all__ = ["Reconciler", "Stopped", "policy_of"]

_log = logging.getLogger("rollout.operator")
_RETRYABLE = frozenset({Phase.ROLLED_BACK, Phase.ABORTED})


class Stopped(Protocol):
    """kopf's ``stopped`` flag of a sync daemon: true once the daemon must end."""

    def __bool__(self) -> bool:
        """Whether the daemon must end."""

    def wait(self, timeout: float | None = None) -> Any:
        """Sleep up to ``timeout`` seconds, waking early when the daemon must end."""


class _InterruptedError(Exception):
    """A wait was cut short: the daemon stops, or a new generation supersedes the tidy-up."""


def policy_of(body: Mapping[str, Any], *, base_dir: Path) -> RolloutPolicy:
    """The policy a RolloutPolicy object states, validated by the policy loader.

    Of ``metadata`` only name, labels (and namespace, where the policy language has it) are
    kept: uid, resourceVersion, managedFields... are the cluster's, not the policy's, so the
    object is validated exactly as the same document in a file would be.

    Raises:
        PolicyError: the spec does not validate (the issues name the fields).
    """
    meta = body.get("metadata") or {}
    kept = {k: meta[k] for k in ("name", "namespace", "labels")
            if k in meta and k in Metadata.model_fields}
    doc = {"apiVersion": body.get("apiVersion", API_VERSION),
           "kind": body.get("kind", "RolloutPolicy"), "metadata": kept,
           "spec": body.get("spec") or {}}
    from rollout.policy.loader import parse_policy

    where = f"RolloutPolicy {meta.get('namespace')}/{meta.get('name')}"
    return parse_policy(json.dumps(doc), where, base_dir=base_dir)


def _generation(body: Mapping[str, Any]) -> int:
    return int((body.get("metadata") or {}).get("generation") or 0)


@dataclass
class Reconciler:
    """Drives every RolloutPolicy given to :meth:`daemon` (one thread each, from kopf).

    Args:
        client: the API client shared by every rollout.
        state_dir: scratch space for evidence files and canary records (an emptyDir).
        ready_timeout: seconds a new run waits for green's Deployment before admission.
        poll: seconds between two looks at an idle rollout (intents, generation).
        resync: seconds after which an idle rollout is reconciled again regardless.
        customize: called with every engine built, before it runs (tests script the
            analyzer's verdicts with it; the platform, router and store stay real).
    """

    client: KubeClient
    state_dir: Path
    ready_timeout: float = 600.0
    poll: float = 1.0
    resync: float = 60.0
    clock: Callable[[], float] = time.time
    customize: Callable[[Engine], None] | None = None
    _written: dict[tuple[str, str], RolloutPolicyStatus] = field(default_factory=dict,
                                                                init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    # -- the daemon ------------------------------------------------------------------------

    def daemon(self, body: Mapping[str, Any], stopped: Stopped) -> None:
        """Reconcile the RolloutPolicy ``body`` (kopf's live view) until ``stopped``."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        with self._lock:
            self._written.pop(key, None)
            old = body.get("status")
            if old:
                # Not ours (or an older shape): overwritten at the first mirror.
                with contextlib.suppress(ValueError):
                    self._written[key] = RolloutPolicyStatus.model_validate(dict(old))
        while not stopped:
            cr = json.loads(json.dumps(dict(body), default=str))  # a snapshot of the live view
            delay = self.poll
            try:
                if self.reconcile(cr, body, stopped):
                    continue  # it moved: look again at once (e.g. tidy up what just finished)
            except _InterruptedError:
                continue
            except (PolicyError, PermanentError) as e:
                # A bad spec or missing targets: say so on the object, try again on a new
                # generation or after a while (a Deployment may be created later).
                _log.warning("RolloutPolicy %s/%s: %s", *key, e)
                self._stalled(cr, e)
                delay = min(self.resync, 10.0)
            except RolloutError as e:  # temporary, or locked by a controller on its way out
                _log.info("RolloutPolicy %s/%s: %s; trying again", *key, e)
                delay = 2.0
            self._idle(cr, body, stopped, delay)

    def _idle(self, cr: Json, live: Mapping[str, Any], stopped: Stopped, delay: float) -> None:
        """Wait until something may call for a pass: a new generation, an intent the
        stored status can act on, or the resync period."""
        name = cr["metadata"]["name"]
        store = self._store(cr)
        started = time.monotonic()
        first = True
        while not stopped and time.monotonic() - started < self.resync:
            if not first or delay > 0:
                stopped.wait(delay if first else self.poll)
            first = False
            if stopped or _generation(live) != _generation(cr):
                return
            try:
                status = store.load(name) if store is not None else None
                if status is None:
                    if store is not None:
                        return
                    continue
                flagged, ids = store.pending_intents(status) if store else (status, [])
            except RolloutError:
                continue
            if status.spec_generation != _generation(cr):
                return
            if ids and (not status.terminal or (flagged.retry_requested
                                                and status.phase in _RETRYABLE)):
                return
            if not status.terminal and status.phase is not Phase.PAUSED:
                return  # unfinished and not waiting for a human: another pass drives it

    # -- one pass ----------------------------------------------------------------------------

    def reconcile(self, cr: Json, live: Mapping[str, Any], stopped: Stopped) -> bool:
        """One level-triggered pass over the RolloutPolicy ``cr`` (see the module docstring);
        True when it drove the rollout (so the next pass should come at once).

        Raises:
            PolicyError, PermanentError: the spec or its targets are unusable.
            RolloutError: temporary trouble (the next pass tries again).
        """
        name, gen = cr["metadata"]["name"], _generation(cr)
        policy = policy_of(cr, base_dir=self.state_dir)
        engine = build(policy, state_dir=self.state_dir, platform="kubernetes",
                       client=self.client, callbacks=Callbacks(
                           log=lambda m: _log.info("%s: %s", name, m),
                           on_transition=lambda _p, nxt, obs: self._mirror(cr, live, nxt, obs)))
        if self.customize is not None:
            self.customize(engine)
        store = engine.store
        assert isinstance(store, ConfigMapStatusStore)  # the kubernetes platform's store
        status = store.load(name)
        flagged, ids = store.pending_intents(status) if status else (None, [])
        if status is None or (status.terminal and (
                status.spec_generation != gen
                or (flagged is not None and flagged.retry_requested
                    and status.phase in _RETRYABLE))):
            attempt = status.attempt + 1 if status and status.spec_generation == gen else 1
            self._start(engine, store, cr, live, stopped, status, ids, attempt)
            return True
        if not status.terminal:
            if (status.spec_generation != gen and flagged is not None
                    and not (flagged.rollback_requested or flagged.abort_requested)):
                _log.info("%s: generation %d supersedes %d mid-rollout; returning to blue",
                          name, gen, status.spec_generation)
                store.request(name, "rollback")
            with store.lock(name):
                current = store.load(name)
                if current is None or current.terminal:
                    return True
                before = current.generation
                final = self._drive(engine, current, cr, live, stopped)
            return final.generation != before
        self._mirror(cr, live, status, None)
        self._own(store, cr)
        if store.tidied(name) != status.generation:
            self._tidy(engine, store, status, cr, live, stopped)
        return False

    def _start(self, engine: Engine, store: ConfigMapStatusStore, cr: Json,
               live: Mapping[str, Any], stopped: Stopped, existing: RolloutStatus | None,
               consumed: list[int], attempt: int) -> None:
        """A new run (first, new generation, or retry) from step 0 with blue at 100 %."""
        name = cr["metadata"]["name"]
        assert engine.platform is not None
        engine.platform.check()
        engine.router.check()
        with store.lock(name):
            if store.load(name) != existing:
                return  # someone else moved it meanwhile: look again
            first = begin(engine, existing, ready_timeout=self.ready_timeout,
                          log=lambda m: _log.info("%s: %s", name, m), consumed=consumed,
                          spec_generation=_generation(cr), attempt=attempt)
            self._own(store, cr)
            self._mirror(cr, live, first, None)
            self._drive(engine, first, cr, live, stopped)

    def _drive(self, engine: Engine, status: RolloutStatus, cr: Json, live: Mapping[str, Any],
               stopped: Stopped) -> RolloutStatus:
        """Run the engine from ``status`` (held lock) until it finishes or pauses, while a
        watcher turns a new generation into a rollback and a deletion into an abort."""
        done = threading.Event()
        name = status.name
        store = engine.store

        def watch() -> None:
            asked = False
            while not asked and not done.wait(0.5):
                deleted = bool(stopped) and bool((live.get("metadata") or {}).get(
                    "deletionTimestamp"))
                if deleted or _generation(live) != status.spec_generation:
                    try:
                        store.request(name, "abort" if deleted else "rollback")
                        asked = True
                    except RolloutError as e:
                        _log.warning("%s: could not record the return to blue: %s", name, e)

        watcher = threading.Thread(target=watch, daemon=True, name=f"watch-{name}")
        watcher.start()
        try:
            return engine.run(status, finish=False)
        finally:
            done.set()
            watcher.join()

    # -- tidy-up -------------------------------------------------------------------------------

    def _tidy(self, engine: Engine, store: ConfigMapStatusStore, status: RolloutStatus,
              cr: Json, live: Mapping[str, Any], stopped: Stopped) -> None:
        """Swap the roles and scale the losing slot down, ``scaleDownDelaySeconds`` after the
        run ended (its last transition's time, so a restarted controller waits only what is
        left), then record it done. Interrupted by a stop or a new generation (which runs
        next and decides about the slots itself)."""
        from rollout.platforms.kubernetes import KubernetesPlatform

        platform = engine.platform
        if isinstance(platform, KubernetesPlatform):
            records = store.history(status.name)
            ended = records[-1].at if records else self.clock()
            remaining = max(0.0, ended + platform.scale_down_delay - self.clock())
            # The engine was built after the run ended: its roles are read from the router,
            # where a promotion already made the candidate serve. finish() wants the roles
            # the run started with.
            roles = platform.roles.swapped() if status.phase is Phase.PROMOTED else platform.roles
            gen = _generation(cr)

            def sleep(seconds: float) -> None:
                deadline = time.monotonic() + seconds
                while (left := deadline - time.monotonic()) > 0:
                    stopped.wait(min(0.5, left))
                    if stopped or _generation(live) != gen:
                        raise _InterruptedError
            dataclasses.replace(platform, roles=roles, scale_down_delay=remaining,
                                sleep=sleep).finish(status)
        store.mark_tidied(status.name, status.generation)

    # -- what the cluster sees -----------------------------------------------------------------

    def _store(self, cr: Json) -> ConfigMapStatusStore | None:
        try:
            policy = policy_of(cr, base_dir=self.state_dir)
        except (PolicyError, ValueError):
            return None
        target = policy.spec.targets.blue
        namespace = getattr(target, "namespace", None)
        return ConfigMapStatusStore(self.client, namespace) if namespace else None

    def _own(self, store: ConfigMapStatusStore, cr: Json) -> None:
        """The ConfigMap store of this rollout is owned by its RolloutPolicy (the cluster's
        garbage collector deletes the trail with the object; owners must share a namespace)."""
        meta = cr["metadata"]
        if store.namespace != meta.get("namespace") or not meta.get("uid"):
            return
        try:
            store.set_owner(meta["name"], {"apiVersion": API_VERSION, "kind": "RolloutPolicy",
                                           "name": meta["name"], "uid": meta["uid"],
                                           "controller": True})
        except RolloutError as e:
            _log.warning("%s: could not own the history ConfigMap: %s", meta["name"], e)

    def _mirror(self, cr: Json, live: Mapping[str, Any], status: RolloutStatus | None,
                obs: Observation | None) -> None:
        """Write ``.status`` for ``status`` (never raises: a lost status write must not stop
        a rollout; the next pass writes it again)."""
        meta = cr["metadata"]
        key = (str(meta.get("namespace")), str(meta["name"]))
        with self._lock:
            previous = self._written.get(key)
        doc = project(status, generation=_generation(live) or _generation(cr),
                      history_config_map=object_name(meta["name"]), previous=previous, obs=obs,
                      clock=self.clock)
        self._write(key, previous, doc)

    def _stalled(self, cr: Json, error: Exception) -> None:
        """A spec that cannot run: Stalled with the reason, until a new generation."""
        meta = cr["metadata"]
        key = (str(meta.get("namespace")), str(meta["name"]))
        gen = _generation(cr)
        with self._lock:
            previous = self._written.get(key)
        now = rfc3339(self.clock())
        reason = "InvalidSpec" if isinstance(error, PolicyError) else "TargetsUnusable"
        conditions = [ConditionStatus(type=t, status=v, reason=reason,
                                      message=str(error)[:32768] if v == "True" else "",
                                      last_transition_time=now, observed_generation=gen)
                      for t, v in (("Ready", "False"), ("Reconciling", "False"),
                                   ("Stalled", "True"))]
        base = previous or RolloutPolicyStatus()
        doc = base.model_copy(update={"reason": f"{reason}: {error}"[:4096],
                                      "conditions": conditions,
                                      "history_config_map": object_name(meta["name"])})
        if previous is not None and previous.reason == doc.reason:
            return
        self._write(key, previous, doc)

    def _write(self, key: tuple[str, str], previous: RolloutPolicyStatus | None,
               doc: RolloutPolicyStatus) -> None:
        if previous == doc:
            return
        try:
            self.client.patch(ROLLOUT_POLICIES, key[0], key[1],
                              {"status": doc.model_dump(mode="json", by_alias=True)},
                              subresource="status")
        except RolloutError as e:
            _log.warning("RolloutPolicy %s/%s: status not written: %s", *key, e)
            return
        with self._lock:
            self._written[key] = doc
