"""Rollouts in a cluster as a client sees them: apply a RolloutPolicy, follow its status,
record intents, list them, read their status and history.

Why a module of its own: on Kubernetes the CLI does not run the rollout, the controller does
(``rollout controller``); the CLI is one of several clients (a CI step, the Argo CD PostSync
Job, a person at a terminal) and must agree with the others on three things, which live here
rather than in the CLI so they can be tested and reused without it:

* **Apply is idempotent.** The CR is the policy document itself. ``apply`` creates it, or
  merge-patches its ``spec`` (keys the new spec dropped are removed) and adds its labels; a
  spec that *means* the same (compared as validated models, so server-side defaulting or key
  order make no difference) is not written at all, so ``metadata.generation`` does not move
  and a GitOps re-sync of an unchanged policy restarts nothing.
* **A verdict is only a verdict for the generation it describes.** ``status.observedGeneration``
  says which ``metadata.generation`` the status is about; right after a new spec is applied,
  the status still tells the *previous* generation's story (often "Promoted"). :meth:`follow`
  waits until the controller reports on the current generation before anything is settled.
* **A watch is a best-effort stream.** It ends (``timeoutSeconds``), drops (connection reset,
  API server restart), or is answered 410 Gone (our resourceVersion was compacted). Each time
  the object is read again and the watch resumed from what was read, until the deadline, so a
  missed event can delay the answer but never change it.

Intents (abort, rollback, retry, pause, resume, promote --confirm) are recorded in the ConfigMap
status store (:meth:`ConfigMapStatusStore.request`), which the controller folds into the
rollout at its next step. An intent that cannot apply to the rollout's phase is refused here
with the reason (:func:`refusal`); the controller ignores one that stopped applying in between.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from rollout.errors import (
    BadInputError,
    NotFoundError,
    StateConflictError,
    TemporaryError,
)
from rollout.k8s.client import ROLLOUT_POLICIES, Json, KubeClient, connect
from rollout.k8s.resource import RolloutPolicyStatus
from rollout.machine import TERMINAL, Phase
from rollout.platforms.kube_store import ConfigMapStatusStore, object_name
from rollout.policy.models import API_VERSION, RolloutPolicy, RolloutSpec
from rollout.store import Intent, TransitionRecord

__all__ = [
    "DEFAULT_NAMESPACE",
    "EXPECT",
    "SETTLED",
    "Applied",
    "ClusterRollouts",
    "FollowEnd",
    "RolloutView",
    "manifest",
    "namespace_of",
    "open_rollouts",
    "refusal",
]

DEFAULT_NAMESPACE = "default"
#: Phases in which a rollout waits for nothing but a person or a new spec.
SETTLED: frozenset[str] = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED,
                                     Phase.PAUSED})
_TERMINAL: frozenset[str] = frozenset(TERMINAL)
_APPLY_CONFLICT_RETRIES = 5

#: What the controller does with each recorded intent (what the CLI tells the user).
EXPECT: dict[str, str] = {
    "promote": "the controller switches all traffic to green (Promoting) and ends Promoted",
    "abort": "the controller returns 100% of traffic to blue at its next step and ends Aborted",
    "rollback": "the controller returns 100% of traffic to blue at its next step and ends "
                "RolledBack",
    "retry": "the controller runs the rollout again from step 0 with blue at 100% "
             "(attempt + 1)",
    "pause": "the controller holds traffic at its current split and waits in Paused; "
             "'rollout resume NAME' continues",
    "resume": "the controller continues the paused analysis where it stopped",
}


def namespace_of(policy: RolloutPolicy | None, flag: str | None) -> str:
    """The CR's namespace: ``--namespace``, else the policy's ``metadata.namespace``, else the
    blue target's namespace of a kubernetes target, else ``default`` (the issue-14 contract)."""
    if flag:
        return flag
    if policy is None:
        return DEFAULT_NAMESPACE
    if policy.metadata.namespace:
        return policy.metadata.namespace
    blue = policy.spec.targets.blue
    return blue.namespace if blue.type == "kubernetes" else DEFAULT_NAMESPACE


def manifest(policy: RolloutPolicy, namespace: str) -> Json:
    """The RolloutPolicy object for ``policy``: the document with the fields its author set
    (no defaults pinned: the controller's version decides those, and a GitOps tool that
    applied the same file sees no drift), its name, namespace and labels."""
    meta: Json = {"name": policy.metadata.name, "namespace": namespace}
    if policy.metadata.labels:
        meta["labels"] = dict(policy.metadata.labels)
    spec = policy.spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if not _same_spec(spec, policy.spec.model_dump(mode="json", by_alias=True)):
        # built in code rather than read from a file: a default left unset may be a union's
        # discriminator (a router's ``type``) without which the spec does not read back
        spec = policy.spec.model_dump(mode="json", by_alias=True)
    return {"apiVersion": API_VERSION, "kind": "RolloutPolicy", "metadata": meta,
            "spec": spec}


def _timestamp(value: Any) -> float | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class RolloutView:
    """One RolloutPolicy as read from the cluster: identity, generation and status."""

    name: str
    namespace: str
    uid: str
    generation: int
    resource_version: str
    created: float | None
    status: RolloutPolicyStatus | None

    @classmethod
    def of(cls, obj: Json) -> RolloutView:
        """Read an object as the API server returned it.

        Raises:
            BadInputError: its status does not match the status model (another version of
                the controller wrote it).
        """
        meta = obj.get("metadata") or {}
        where = f"RolloutPolicy {meta.get('namespace')}/{meta.get('name')}"
        raw = obj.get("status")
        try:
            status = RolloutPolicyStatus.model_validate(raw) if raw else None
        except ValidationError as e:
            raise BadInputError(f"{where}: its status does not match this CLI's model (a "
                                f"controller of another version?): {e}") from e
        return cls(name=str(meta.get("name")), namespace=str(meta.get("namespace")),
                   uid=str(meta.get("uid") or ""), generation=int(meta.get("generation") or 0),
                   resource_version=str(meta.get("resourceVersion") or ""),
                   created=_timestamp(meta.get("creationTimestamp")), status=status)

    @property
    def current(self) -> bool:
        """Whether the status describes this generation of the spec (not an older one)."""
        return self.status is not None and self.status.observed_generation == self.generation

    @property
    def phase(self) -> str:
        """The phase of the current generation: Pending until the controller reports on it."""
        if self.status is None or not self.current or not self.status.phase:
            return Phase.PENDING.value
        return self.status.phase

    @property
    def settled(self) -> bool:
        """Whether the current generation waits for nothing but a person or a new spec."""
        return self.phase in SETTLED

    @property
    def progress(self) -> tuple[Any, ...]:
        """What a follower shows; equal tuples are the same news."""
        s = self.status or RolloutPolicyStatus()
        return (self.generation, s.observed_generation, s.phase, s.step, s.blue_weight,
                s.green_weight, s.verdict, s.reason, s.awaiting_promotion, s.attempt)

    def as_json(self) -> Json:
        """The view for ``--output json``: identity, the phase of the current generation,
        and the status as the controller wrote it (camelCase)."""
        s = self.status
        return {"name": self.name, "namespace": self.namespace, "generation": self.generation,
                "observedGeneration": s.observed_generation if s else None,
                "current": self.current, "phase": self.phase,
                "weights": None if s is None or s.green_weight is None else
                {"blue": s.blue_weight, "green": s.green_weight},
                "verdicts": {g.name: g.verdict for g in s.gates} if s else {},
                "status": s.model_dump(mode="json", by_alias=True) if s else None}


@dataclass(frozen=True)
class Applied:
    """What :meth:`ClusterRollouts.apply` did and the object it left."""

    view: RolloutView
    action: Literal["created", "configured", "unchanged"]


@dataclass(frozen=True)
class FollowEnd:
    """How :meth:`ClusterRollouts.follow` stopped, and the last view it read."""

    view: RolloutView
    why: Literal["settled", "timeout", "deleted"]


def _merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch turning ``old`` into ``new`` (dropped keys become null)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {k: None for k in old if k not in new}
    for k, v in new.items():
        if k not in old:
            patch[k] = v
        elif old[k] != v:
            patch[k] = _merge_patch(old[k], v)
    return patch


def _same_spec(current: Json, wanted: Json) -> bool:
    """Whether two specs mean the same policy (validated models compare, not key orders or
    defaults filled in by the API server). An existing spec that no longer validates differs."""
    try:
        return RolloutSpec.model_validate(current) == RolloutSpec.model_validate(wanted)
    except ValidationError:
        return False


def refusal(view: RolloutView, intent: Intent) -> str | None:
    """Why ``intent`` cannot apply to the rollout as it is now, or None if it can."""
    phase, name = view.phase, view.name
    awaiting = view.current and view.status is not None and view.status.awaiting_promotion
    now = f"{name} is {phase}" + (" (awaiting promotion)" if awaiting else "")
    if intent == "promote" and not awaiting:
        return (f"{now}: --confirm applies only to a rollout waiting in Paused/"
                f"AwaitingPromotion (promotion.auto: false)")
    if intent in ("abort", "rollback") and phase in _TERMINAL:
        hint = ("apply the previous spec to go back" if phase == Phase.PROMOTED
                else "traffic is already on blue")
        return f"{now}: it has ended, nothing to {intent} ({hint})"
    if intent == "retry" and phase not in (Phase.ROLLED_BACK, Phase.ABORTED):
        hint = ("; apply a new spec to roll out again" if phase == Phase.PROMOTED
                else "; it is still running")
        return f"{now}: retry runs a RolledBack or Aborted rollout again{hint}"
    if intent == "pause" and phase not in (Phase.SHIFTING, Phase.ANALYZING):
        return (f"{now}: pause holds traffic while it shifts or is analysed "
                f"(Shifting/Analyzing)")
    if intent == "resume" and awaiting:
        return (f"{now}: it waits for promotion, not for resume: 'rollout promote {name} "
                f"--confirm' switches traffic to green, 'rollout rollback {name}' returns it "
                f"to blue")
    if intent == "resume" and phase != Phase.PAUSED:
        return f"{now}: not paused, nothing to resume (the controller drives it)"
    return None


@dataclass
class ClusterRollouts:
    """The RolloutPolicy objects of one namespace (or all), through one API client.

    Args:
        client: the API client (its retry layer covers 5xx and timeouts of single calls).
        namespace: the namespace of the CRs, of their status ConfigMaps and of intents.
        watch_seconds: how long one watch request may stay open before it is renewed.
        clock, sleep: injectable for tests.
    """

    client: KubeClient
    namespace: str
    watch_seconds: int = 30
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _store: ConfigMapStatusStore | None = field(default=None, init=False, repr=False)

    @property
    def store(self) -> ConfigMapStatusStore:
        """The status store holding intents and the decision trail (``rollout-NAME``)."""
        if self._store is None:
            self._store = ConfigMapStatusStore(self.client, self.namespace)
        return self._store

    def get(self, name: str) -> RolloutView:
        """The rollout ``name``.

        Raises:
            NotFoundError: no such RolloutPolicy; the message lists the ones there are.
        """
        try:
            return RolloutView.of(self.client.get(ROLLOUT_POLICIES, self.namespace, name))
        except NotFoundError:
            names = [v.name for v in self.list_views()]
            there = (f"there are: {', '.join(names)}" if names else
                     "there are none (another --namespace?)")
            raise NotFoundError(f"no RolloutPolicy {name!r} in namespace {self.namespace}; "
                                f"{there}") from None

    def list_views(self, *, all_namespaces: bool = False) -> list[RolloutView]:
        """The RolloutPolicies of our namespace (or of every namespace), sorted."""
        res = (dataclasses.replace(ROLLOUT_POLICIES, namespaced=False) if all_namespaces
               else ROLLOUT_POLICIES)
        views = [RolloutView.of(o) for o in self.client.list_objects(res, self.namespace)]
        return sorted(views, key=lambda v: (v.namespace, v.name))

    def apply(self, policy: RolloutPolicy) -> Applied:
        """Create the CR of ``policy`` or bring its spec and labels up to date.

        Raises:
            StateConflictError: the object kept changing under us.
            BadInputError: the API server refused the object (schema, admission).
        """
        body = manifest(policy, self.namespace)
        name = policy.metadata.name
        for _ in range(_APPLY_CONFLICT_RETRIES):
            try:
                current = self.client.get(ROLLOUT_POLICIES, self.namespace, name)
            except NotFoundError:
                try:
                    created = self.client.create(ROLLOUT_POLICIES, self.namespace, body)
                except StateConflictError:
                    continue  # created by someone else in between: patch theirs
                return Applied(RolloutView.of(created), "created")
            meta = current.get("metadata") or {}
            labels = meta.get("labels") or {}
            missing = {k: v for k, v in body["metadata"].get("labels", {}).items()
                       if labels.get(k) != v}
            if _same_spec(current.get("spec") or {}, body["spec"]) and not missing:
                return Applied(RolloutView.of(current), "unchanged")
            patch: Json = {"metadata": {"resourceVersion": meta.get("resourceVersion")},
                           "spec": _merge_patch(current.get("spec") or {}, body["spec"])}
            if missing:
                patch["metadata"]["labels"] = missing
            try:
                patched = self.client.patch(ROLLOUT_POLICIES, self.namespace, name, patch)
            except StateConflictError:
                continue  # changed since we read it: the patch was computed on a stale spec
            return Applied(RolloutView.of(patched), "configured")
        raise StateConflictError(f"RolloutPolicy {self.namespace}/{name} changed under us "
                                 f"{_APPLY_CONFLICT_RETRIES} times in a row")

    def follow(self, view: RolloutView, *, timeout: float | None,
               on_update: Callable[[RolloutView], None],
               log: Callable[[str], None] = lambda _: None) -> FollowEnd:
        """Follow the rollout from ``view`` until its current generation is settled (see
        :data:`SETTLED`), it is deleted (or replaced: another uid), or ``timeout`` seconds
        passed (None: no limit). ``on_update`` sees ``view`` and then every view that brings
        news; ``log`` hears of dropped watches.

        A status about an older generation is never settled. The watch is renewed every
        :attr:`watch_seconds`; when it drops or is answered 410 Gone the object is read again
        and the watch resumed from there, with backoff while the API server is away.
        """
        deadline = None if timeout is None else self.clock() + timeout
        on_update(view)
        failures = 0
        while not view.settled:
            remaining = None if deadline is None else deadline - self.clock()
            if remaining is not None and remaining <= 0:
                return FollowEnd(view, "timeout")
            seconds = self.watch_seconds if remaining is None else \
                max(1, min(self.watch_seconds, round(remaining + 0.5)))
            try:
                for kind, obj in self.client.watch(ROLLOUT_POLICIES, self.namespace,
                                                   name=view.name, timeout_seconds=seconds,
                                                   resource_version=view.resource_version):
                    seen = RolloutView.of(obj)
                    if kind == "DELETED" or seen.uid != view.uid:
                        return FollowEnd(view, "deleted")
                    view = self._news(view, seen, on_update)
                    if view.settled or (deadline is not None and self.clock() >= deadline):
                        break
                failures = 0
                continue  # the server ended the watch (timeoutSeconds): renew it
            except StateConflictError as e:  # 410 Gone: too old a resourceVersion to resume
                log(f"watch of {view.name} expired ({e}); reading it again")
            except TemporaryError as e:  # dropped, or the API server is away
                failures += 1
                log(f"watch of {view.name} dropped ({e}); reconnecting")
                self.sleep(min(5.0, 0.1 * 2 ** min(failures, 6)))
            try:
                seen = RolloutView.of(self.client.get(ROLLOUT_POLICIES, self.namespace,
                                                      view.name))
            except NotFoundError:
                return FollowEnd(view, "deleted")
            except TemporaryError:
                continue  # still away: the next watch attempt backs off again
            if seen.uid != view.uid:
                return FollowEnd(view, "deleted")
            view = self._news(view, seen, on_update)
        return FollowEnd(view, "settled")

    @staticmethod
    def _news(old: RolloutView, new: RolloutView,
              on_update: Callable[[RolloutView], None]) -> RolloutView:
        if new.progress != old.progress:
            on_update(new)
        return new

    def request(self, name: str, intent: Intent) -> RolloutView:
        """Record ``intent`` for rollout ``name`` after checking it can apply now.

        Raises:
            NotFoundError: no such rollout (the message lists those there are).
            BadInputError: the intent cannot apply to the rollout's phase (why and what to do).
        """
        view = self.get(name)
        why = refusal(view, intent)
        if why is not None:
            raise BadInputError(why)
        self.store.request(name, intent)
        return view

    def history(self, name: str) -> list[TransitionRecord]:
        """The decision trail of rollout ``name`` (its ConfigMap ``rollout-NAME``).

        Raises:
            NotFoundError: no such rollout, or the controller has not started it yet.
        """
        rows = self.store.history(name)
        if not rows:
            view = self.get(name)
            raise NotFoundError(f"no history for RolloutPolicy {self.namespace}/{view.name} "
                                f"yet (ConfigMap {object_name(name)}): the controller has not "
                                f"started it (phase {view.phase})")
        return rows


def open_rollouts(*, namespace: str, kubeconfig: str | None = None,
                  context: str | None = None) -> ClusterRollouts:
    """A :class:`ClusterRollouts` from a kubeconfig (or the pod's ServiceAccount).

    Raises:
        BadInputError: no usable Kubernetes configuration.
    """
    return ClusterRollouts(connect(kubeconfig=kubeconfig, context=context), namespace)
