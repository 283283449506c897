"""The composition root: a policy (or a stored plan) in, a running rollout out.

Why a module of its own: the CLI, ``rollout demo``, the benches and the in-cluster controller
must run *the same* rollout. Before this module the wiring (platform, router, store, analyzer,
observers, the promote/act flows, the fallbacks when the policy or the store is unusable) lived
in the CLI, so anything else had to re-enter the CLI to start a rollout. Here it is built once,
from a policy; callers pass their printers in as :class:`Callbacks` and get statuses back. The
CLI only parses, calls, prints and maps statuses to exit codes.

Ways in:

* :func:`promote`: a new run from a policy (check, lock, save the policy copy, run);
* :func:`begin`: record the first status of a new run (what ``promote`` and the in-cluster
  controller, :mod:`rollout.operator`, both do once they hold the rollout's lock);
* :func:`act`: a user intent (abort, rollback, resume, promote --confirm) on a known rollout,
  acted on at once when no controller holds its lock. ``abort`` and ``rollback`` need no
  policy: the router frozen in the stored plan (or one named by the caller) suffices;
* :func:`restore_blue_without_store`: the store is unreadable; blue 100 through a router,
  read back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.controller import BLUE, Controller, NoAnalysis, stop_probe
from rollout.errors import BadInputError, LockedError, NotFoundError, RolloutError
from rollout.machine import Observation, Plan, RolloutStatus, Weights
from rollout.platforms.base import Platform, StatusStore
from rollout.routers.base import TrafficRouter
from rollout.store import Intent, StateStore

if TYPE_CHECKING:
    from gates.canary.runner import CanaryProgress
    from rollout.k8s.client import KubeClient
    from rollout.notify import Notifier
    from rollout.policy.models import RolloutPolicy

__all__ = [
    "Callbacks",
    "Engine",
    "act",
    "begin",
    "build",
    "live_weights",
    "plan_router",
    "promote",
    "restore_blue_without_store",
]

_log = logging.getLogger("rollout.engine")
Transition = Callable[[RolloutStatus, RolloutStatus, Observation], None]


def _log_info(message: str) -> None:
    _log.info("%s", message)


@dataclass(frozen=True)
class Callbacks:
    """How a caller sees a rollout happen (the CLI prints; tests and benches may record)."""

    log: Callable[[str], None] = _log_info
    on_transition: Transition | None = None
    on_canary_progress: Callable[[CanaryProgress], None] | None = None


@dataclass
class Engine:
    """Everything one rollout needs. ``policy``/``platform``/``notifier`` are None when it was
    built from the stored plan alone (only a return to blue is possible then)."""

    store: StatusStore
    controller: Controller
    policy: RolloutPolicy | None = None
    platform: Platform | None = None
    notifier: Notifier | None = field(default=None)

    @property
    def router(self) -> TrafficRouter:
        """The router the controller moves traffic with."""
        return self.controller.router

    def run(self, status: RolloutStatus, *, finish: bool = True) -> RolloutStatus:
        """Run the controller, retire the losing colour (unless ``finish`` is False: the
        in-cluster controller does that itself, resumably), and let notifications leave."""
        try:
            final = self.controller.run(status)
            if finish and self.platform is not None:
                self.platform.finish(final)
        finally:
            if self.notifier is not None:
                self.notifier.close(timeout=10)
        return final

    def read_weights(self, status: RolloutStatus) -> dict[str, int] | None:
        """Weights read back from the router now (the recorded ones if it cannot tell)."""
        try:
            w = self.router.get_weights()
        except RolloutError:
            return status.weights.model_dump() if status.weights else None
        return w.model_dump() if w else None


def build(policy: RolloutPolicy, *, state_dir: Path, platform: str | None = None,
          kubeconfig: str | None = None, context: str | None = None,
          callbacks: Callbacks | None = None, client: KubeClient | None = None) -> Engine:
    """Platform, router, store, analyzer and observers of ``policy`` (nothing runs yet).

    ``client``: an existing Kubernetes client (the in-cluster controller shares one across
    its rollouts instead of reading the kubeconfig again for each)."""
    from rollout import observability
    from rollout.analysis import PolicyAnalyzer
    from rollout.baselines import BaselineRecorder
    from rollout.notify import Notifier
    from rollout.report import EvidenceWriter

    cb = callbacks or Callbacks()
    plat: Platform
    store: StatusStore
    if (platform or policy.spec.platform) == "kubernetes":
        from rollout.platforms.kubernetes import build_kubernetes

        plat, store, router = build_kubernetes(policy, kubeconfig=kubeconfig, context=context,
                                               client=client)
    else:
        from rollout.platforms.local import build_local

        plat, store, router = build_local(policy, state_dir=state_dir)
    analyzer = PolicyAnalyzer(policy, plat, records_dir=state_dir / "records",
                              on_canary_progress=cb.on_canary_progress,
                              should_stop=stop_probe(store, policy.metadata.name),
                              consecutive_error_limit=policy.spec.metrics.consecutive_error_limit)
    notifier = Notifier.from_spec(policy.spec.notify, labels=policy.metadata.labels)
    ctl = Controller(store, router, analyzer, on_transition=observability.compose(
        cb.on_transition, EvidenceWriter(state_dir, policy=policy), observability.metrics(),
        BaselineRecorder(state_dir, log=cb.log), notifier))
    return Engine(store, ctl, policy, plat, notifier)


def plan_of(policy: RolloutPolicy) -> Plan:
    """The parts of ``policy`` frozen into the stored status at promote time."""
    spec = policy.spec
    return Plan(weights=tuple(st.weight for st in spec.steps),
                on_inconclusive=spec.rollback.on_inconclusive,
                verify=spec.promotion.verify_seconds > 0, auto_promote=spec.promotion.auto,
                router=spec.router.model_dump(mode="json", by_alias=True))


def promote(engine: Engine, *, state_dir: Path, ready_timeout: float,
            callbacks: Callbacks | None = None) -> RolloutStatus:
    """A new run of the engine's policy: check, lock, save the policy copy, run.

    Raises:
        BadInputError: the rollout is in progress (resume, abort or rollback it instead),
            or the targets/router cannot be used; nothing was changed.
        LockedError: another controller holds the rollout.
    """
    cb = callbacks or Callbacks()
    policy, plat = engine.policy, engine.platform
    if policy is None or plat is None:
        raise BadInputError("a new run needs a policy")
    name = policy.metadata.name
    plat.check()
    engine.router.check()
    with engine.store.lock(name):
        existing = engine.store.load(name)
        if existing is not None and not existing.terminal:
            raise BadInputError(
                f"rollout {name!r} is in progress ({existing.phase.value}): use 'rollout resume "
                f"{name}', 'rollout abort {name}' or 'rollout rollback {name}'")
        save_policy_copy(state_dir, policy)
        status = begin(engine, existing, ready_timeout=ready_timeout, log=cb.log)
        return engine.run(status)


def begin(engine: Engine, existing: RolloutStatus | None, *, ready_timeout: float,
          log: Callable[[str], None], consumed: list[int] | None = None,
          **fields: Any) -> RolloutStatus:
    """Wait (bounded) for green, then save the first status of a new run after ``existing``
    (a finished run of the same name, or None) and return it. Call it holding the lock.

    ``fields`` are extra status fields of the run (the controller's ``spec_generation`` and
    ``attempt``); ``consumed`` are intent ids this run absorbs (a retry, stale requests of the
    finished run), consumed in the same write.
    """
    policy, plat = engine.policy, engine.platform
    if policy is None or plat is None:
        raise BadInputError("a new run needs a policy")
    name = policy.metadata.name
    try:
        plat.wait_ready("green", timeout=ready_timeout)
    except Exception as e:  # admission judges readiness; this wait only saves time
        log(f"green not ready: {e}")
    status = RolloutStatus(name=name, plan=plan_of(policy), **fields)
    if existing is None:
        engine.store.save(status, previous=None)
    else:
        status = status.model_copy(update={"generation": existing.generation + 1})
        engine.store.save(status, previous=existing, evidence={"action": "new run", **fields},
                          consumed=consumed)
    spec = policy.spec
    log(f"rollout {name}: started ({len(spec.steps)} steps, gates: "
        f"{', '.join(g.name for g in spec.gates)})")
    return status


def _copy_path(state_dir: Path, name: str) -> Path:
    return state_dir / "policies" / f"{name}.json"


def save_policy_copy(state_dir: Path, policy: RolloutPolicy) -> None:
    """The policy as the run started with it (``resume`` needs no file from the user)."""
    path = _copy_path(state_dir, policy.metadata.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(policy.model_dump_json(by_alias=True))
    os.replace(tmp, path)


def load_policy_for(state_dir: Path, name: str, policy_file: Path | None) -> RolloutPolicy:
    """``policy_file`` if given, else the copy ``promote`` saved.

    Raises:
        NotFoundError: no copy and no file.
        PolicyError, ValueError, OSError: the file or copy does not load.
    """
    from rollout.policy.loader import load_policy
    from rollout.policy.models import RolloutPolicy as Model

    if policy_file is not None:
        return load_policy(policy_file)
    path = _copy_path(state_dir, name)
    if not path.exists():
        raise NotFoundError(f"no rollout {name!r} in {state_dir} (pass --policy FILE)")
    return Model.model_validate_json(path.read_text())


def _try_policy(state_dir: Path, name: str, policy_file: Path | None
                ) -> tuple[RolloutPolicy | None, str]:
    from rollout.policy.loader import PolicyError

    try:
        return load_policy_for(state_dir, name, policy_file), ""
    except (RolloutError, PolicyError, ValueError, OSError) as e:
        return None, f"{type(e).__name__}: {e}"


def plan_router(status: RolloutStatus) -> TrafficRouter:
    """The router frozen in the stored plan (local routers only: Kubernetes needs a client).

    Raises:
        BadInputError: the plan names no router, or one that cannot be built alone.
    """
    from pydantic import TypeAdapter, ValidationError

    from rollout.policy.models import RouterSpec
    from rollout.routers import make_router

    if status.plan.router is None:
        raise BadInputError(f"the stored plan of {status.name!r} names no router: pass "
                            f"--policy FILE or --haproxy-socket PATH")
    try:
        spec = TypeAdapter(RouterSpec).validate_python(status.plan.router)
    except ValidationError as e:
        raise BadInputError(f"the stored plan's router does not parse: {e}") from e
    return make_router(spec)


def _from_plan(name: str, state_dir: Path, router: TrafficRouter | None, why: str,
               cb: Callbacks) -> Engine:
    """Store + router + no analysis: enough to return traffic to blue (abort, rollback)."""
    cb.log(f"policy unusable ({why}); returning traffic to blue with the router "
           f"{'given on the command line' if router else 'frozen in the stored plan'}")
    store = StateStore(state_dir)
    status = store.load(name)
    if status is None:
        raise NotFoundError(f"no rollout {name!r} has been started")
    ctl = Controller(store, router or plan_router(status), NoAnalysis(),
                     on_transition=cb.on_transition)
    return Engine(store, ctl)


def act(name: str, intent: Intent | None, *, state_dir: Path, policy_file: Path | None = None,
        platform: str | None = None, router: TrafficRouter | None = None,
        callbacks: Callbacks | None = None) -> tuple[RolloutStatus, Engine]:
    """Record ``intent`` (None: just resume) and act on it now if no controller holds the lock.

    Raises:
        BadInputError: the policy is unusable for an intent that needs it (resume, promote).
        NotFoundError: no such rollout.
        StoreCorruptError: the store is unreadable (see :func:`restore_blue_without_store`).
    """
    cb = callbacks or Callbacks()
    policy, why = _try_policy(state_dir, name, policy_file)
    if policy is None and intent not in ("abort", "rollback"):
        raise BadInputError(f"cannot load the policy of {name!r}: {why}")
    if policy is None:
        engine = _from_plan(name, state_dir, router, why, cb)
    else:
        engine = build(policy, state_dir=state_dir, platform=platform, callbacks=cb)
        if router is not None:
            engine.controller.router = router
    status = engine.store.load(name)
    if status is None:
        raise NotFoundError(f"no rollout {name!r} has been started")
    if intent is not None:
        engine.store.request(name, intent)
    _redeliver(engine, status)
    if status.terminal:
        if engine.notifier is not None:
            engine.notifier.close(timeout=10)
        return status, engine
    try:
        with engine.store.lock(name):
            return engine.run(engine.store.load(name) or status), engine
    except LockedError as e:
        cb.log(f"{intent or 'resume'} recorded; {e} and will act on it")
        return status, engine


def _redeliver(engine: Engine, status: RolloutStatus) -> None:
    """Notifications are at least once: the last run may have died between saving a
    transition and announcing it, so announce it again (receivers dedupe by its id)."""
    if engine.notifier is None:
        return
    rows = engine.store.history(status.name)
    if rows and rows[-1].generation == status.generation:
        engine.notifier.redeliver(rows[-1].from_phase, status)


def restore_blue_without_store(name: str, *, state_dir: Path, policy_file: Path | None,
                               router: TrafficRouter | None) -> Weights | None:
    """The store is unreadable: set blue 100 through ``router`` (or the policy's) and return
    what the router reads back.

    Raises:
        BadInputError: no router is known (no ``router`` and no loadable policy).
    """
    if router is None:
        policy, why = _try_policy(state_dir, name, policy_file)
        if policy is None:
            raise BadInputError(f"no router known to return traffic to blue ({why}): pass "
                                f"--haproxy-socket PATH (or --policy FILE)")
        from rollout.routers import make_router

        router = make_router(policy.spec.router)
    router.set_weights(BLUE)
    return router.get_weights()


def live_weights(router: TrafficRouter | None, status: RolloutStatus) -> dict[str, Any]:
    """The split the router applies now, beside the recorded one (they differ after a crash)."""
    recorded = status.weights.model_dump() if status.weights else None
    if router is None:
        return {"weights_live": None, "weights_live_error": "router not readable from here"}
    try:
        w = router.get_weights()
    except RolloutError as e:
        return {"weights_live": None, "weights_live_error": f"{type(e).__name__}: {e}"}
    live = w.model_dump() if w else None
    return {"weights_live": live, "weights_differ": live is not None and live != recorded}
