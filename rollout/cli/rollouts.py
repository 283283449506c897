"""``rollout promote``, ``status``, ``abort``, ``rollback``, ``resume``, ``history``.

Exit codes: 0 promoted, 1 rolled back or aborted (traffic on blue), 2 bad input (nothing
changed: bad policy, unreachable endpoint, router missing, rollout locked, corrupt store),
3 paused or inconclusive (a human decides: ``rollout resume`` or ``rollout rollback``),
5 internal error (the controller failed; traffic was returned to blue and read back).

The CLI records intents; the controller acts. ``abort``/``rollback``/``resume`` write the
intent, then act themselves if no controller holds the rollout's lock. ``abort`` and
``rollback`` need no policy: the router frozen in the stored plan (or ``--haproxy-socket``
when the store itself is unreadable) is enough to return traffic to blue.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rollout.cli._common import EXIT_INTERNAL, OutputFormat, bad_input, print_json

if TYPE_CHECKING:
    from gates.canary.runner import CanaryProgress
    from rollout.controller import Controller
    from rollout.machine import Observation, RolloutStatus
    from rollout.notify import Notifier
    from rollout.platforms.base import Platform, StatusStore
    from rollout.policy.models import RolloutPolicy
    from rollout.routers.base import TrafficRouter
    from rollout.store import Intent

__all__ = ["register"]

EXIT_BY_PHASE = {"Promoted": 0, "RolledBack": 1, "Aborted": 1, "RollingBack": 1, "Paused": 3}
_ENDS_ON_BLUE = frozenset({"RolledBack", "RollingBack", "Aborted"})


class PlatformChoice(StrEnum):
    """``--platform``: overrides the policy's ``spec.platform``."""

    local = "local"
    kubernetes = "kubernetes"


StateDir = Annotated[Path, typer.Option(envvar="ROLLOUT_STATE_DIR", help=(
    "State directory of the local platform (SQLite status, locks, canary records)."))]
Output = Annotated[OutputFormat, typer.Option("--output", "-o", help="text or json.")]
Name = Annotated[str, typer.Argument(help="Rollout name (the policy's metadata.name).")]
DEFAULT_STATE = Path(".state")


@dataclass
class Session:
    """Everything one rollout needs, built from its policy."""

    policy: RolloutPolicy | None
    platform: Platform | None
    store: StatusStore
    controller: Controller
    notifier: Notifier | None

    def run(self, status: RolloutStatus) -> RolloutStatus:
        """Run the controller, retire the losing colour, and let notifications leave."""
        try:
            final = self.controller.run(status)
            if self.platform is not None:
                self.platform.finish(final)
        finally:
            if self.notifier is not None:
                self.notifier.close(timeout=10)
        return final


def _echo(msg: str) -> None:
    typer.echo(f"[{time.strftime('%H:%M:%S')}] {msg}", err=True)


def _transition(prev: RolloutStatus, nxt: RolloutStatus, obs: Observation) -> None:
    step = f" step {nxt.step}" if nxt.phase.value in ("Shifting", "Analyzing") else ""
    w = f"  weights blue {nxt.weights.blue}/green {nxt.weights.green}" if nxt.weights else ""
    _echo(f"{prev.phase.value} -> {nxt.phase.value}{step}{w}: {nxt.reason}")
    for name, g in obs.gates.items():
        _echo(f"    gate {name}: {g.verdict.value.upper()}  {g.reason}")


def _canary_progress(p: CanaryProgress) -> None:
    if not sys.stderr.isatty():
        return
    p95 = "  ".join(f"{arm} P95 {v:.3f}s" for arm, v in p.p95.items() if math.isfinite(v))
    sys.stderr.write(f"\r  canary {p.slices}/{p.budget} slices  {p95}  judge: {p.judge}"[:160]
                     .ljust(120))
    sys.stderr.flush()
    if p.slices >= p.budget:
        sys.stderr.write("\n")


def _build(policy: RolloutPolicy, *, platform: PlatformChoice | None, state_dir: Path,
           kubeconfig: str | None, context: str | None) -> Session:
    from rollout import observability
    from rollout.analysis import PolicyAnalyzer
    from rollout.controller import Controller
    from rollout.notify import Notifier
    from rollout.report import EvidenceWriter

    kind = platform.value if platform else policy.spec.platform
    records = state_dir / "records"
    plat: Platform
    store: StatusStore
    if kind == "kubernetes":
        from rollout.platforms.kubernetes import build_kubernetes

        plat, store, router = build_kubernetes(policy, kubeconfig=kubeconfig, context=context)
    else:
        from rollout.platforms.local import build_local

        plat, store, router = build_local(policy, state_dir=state_dir)
    from rollout.controller import stop_probe

    analyzer = PolicyAnalyzer(policy, plat, records_dir=records,
                              on_canary_progress=_canary_progress,
                              should_stop=stop_probe(store, policy.metadata.name))
    notifier = Notifier.from_spec(policy.spec.notify)
    printer = observability.log_transition \
        if observability.log_format() is observability.LogFormat.json else _transition
    ctl = Controller(store, router, analyzer, on_transition=observability.compose(
        printer, EvidenceWriter(state_dir, policy=policy), observability.metrics(), notifier))
    return Session(policy, plat, store, ctl, notifier)


@contextmanager
def _errors(output: OutputFormat) -> Iterator[None]:
    """Map our error tree onto exit codes (2 = nothing changed) with a message, no traceback."""
    from rollout.errors import PermanentError, TemporaryError
    from rollout.policy.loader import PolicyError

    try:
        yield
    except PolicyError as e:
        bad_input(f"invalid policy:\n{e}", output=output)
    except (PermanentError, TemporaryError) as e:
        bad_input(f"{type(e).__name__}: {e}", output=output)


def _report(status: RolloutStatus, store: StatusStore, output: OutputFormat,
            extra: dict[str, Any] | None = None) -> None:
    if output is OutputFormat.json:
        print_json({
            "name": status.name, "phase": status.phase.value, "step": status.step,
            "reason": status.reason, "verdicts": status.verdicts,
            "weights": status.weights.model_dump() if status.weights else None,
            "generation": status.generation,
            "history": [{"from": h.from_phase, "to": h.to_phase, "step": h.step,
                         "reason": h.reason, "at": h.at}
                        for h in store.history(status.name)][-50:],
            **(extra or {})})
        return
    w = (f"blue {status.weights.blue} / green {status.weights.green}" if status.weights
         else "unknown (router does not report)")
    typer.echo(f"rollout {status.name}: {status.phase.value.upper()}")
    typer.echo(f"  reason:  {status.reason}")
    live = (extra or {}).get("weights_live")
    if (extra or {}).get("weights_differ") and live:
        typer.echo(f"  weights: blue {live['blue']} / green {live['green']} read from the router "
                   f"NOW; recorded: {w} (the controller stopped between the two)")
    elif live:
        typer.echo(f"  weights: blue {live['blue']} / green {live['green']} (read back)")
    else:
        typer.echo(f"  weights: {w} (recorded)")
    for gate, verdict in status.verdicts.items():
        typer.echo(f"  gate {gate}: {verdict}")


def _exit(status: RolloutStatus) -> typer.Exit:
    if status.internal_error and status.phase.value in _ENDS_ON_BLUE:
        return typer.Exit(EXIT_INTERNAL)
    return typer.Exit(EXIT_BY_PHASE.get(status.phase.value, 3))


def promote(
    policy_arg: Annotated[Path | None, typer.Argument(metavar="[POLICY]", help=(
        "RolloutPolicy YAML (shorthand for --policy).")), ] = None,
    policy_opt: Annotated[Path | None, typer.Option("--policy", help=(
        "RolloutPolicy YAML."))] = None,
    green: Annotated[str | None, typer.Option(help="Override targets.green.url.")] = None,
    platform: Annotated[PlatformChoice | None, typer.Option(help="Override spec.platform.")] = None,
    kubeconfig: Annotated[str | None, typer.Option(help="kubeconfig (kubernetes).")] = None,
    context: Annotated[str | None, typer.Option(help="kubeconfig context.")] = None,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for green.")] = 300.0,
    confirm: Annotated[bool, typer.Option("--confirm", help=(
        "Confirm the promotion of rollout NAME (given instead of POLICY) that waits in "
        "Paused/AwaitingPromotion because its policy says promotion.auto: false."))] = False,
    state_dir: StateDir = DEFAULT_STATE,
    output: Output = OutputFormat.text,
) -> None:
    """Roll green out step by step; promote only what the gates prove, else roll back.

    ``rollout promote NAME --confirm`` is the manual promotion gate of a policy with
    ``promotion.auto: false``.
    """
    from rollout.machine import Plan, RolloutStatus
    from rollout.policy.loader import load_policy

    if confirm:
        if policy_arg is None:
            bad_input("--confirm takes the rollout's name: 'rollout promote NAME --confirm'",
                      output=output)
        _act(str(policy_arg), "promote", policy_file=policy_opt, platform=platform,
             state_dir=state_dir, output=output)
        return
    if (policy_arg is None) == (policy_opt is None):
        bad_input("give the policy once: 'rollout promote POLICY' or "
                  "'rollout promote --policy POLICY'", output=output)
    policy_file = policy_arg or policy_opt
    assert policy_file is not None
    with _errors(output):
        policy = load_policy(policy_file)
        if green is not None:
            policy = _override_green(policy, green)
        s = _build(policy, platform=platform, state_dir=state_dir, kubeconfig=kubeconfig,
                   context=context)
        name = policy.metadata.name
        assert s.platform is not None  # a session built from a policy has its platform
        s.platform.check()
        s.controller.router.check()
        with s.store.lock(name):
            existing = s.store.load(name)
            if existing is not None and not existing.terminal:
                bad_input(f"rollout {name!r} is in progress ({existing.phase.value}): use "
                          f"'rollout resume {name}', 'rollout abort {name}' or "
                          f"'rollout rollback {name}'", output=output)
            _save_policy(state_dir, policy)
            try:
                s.platform.wait_ready("green", timeout=ready_timeout)
            except Exception as e:
                _echo(f"green not ready: {e}")
            spec = policy.spec
            status = RolloutStatus(name=name, plan=Plan(
                weights=tuple(st.weight for st in spec.steps),
                on_inconclusive=spec.rollback.on_inconclusive,
                verify=spec.promotion.verify_seconds > 0, auto_promote=spec.promotion.auto,
                router=spec.router.model_dump(mode="json", by_alias=True)))
            if existing is not None:
                status = status.model_copy(update={"generation": existing.generation + 1})
            _start(s.store, status, existing)
            _echo(f"rollout {name}: started ({len(spec.steps)} steps, gates: "
                  f"{', '.join(g.name for g in spec.gates)})")
            final = s.run(status)
        _report(final, s.store, output, {"weights": _read_weights(s.controller.router, final)})
    raise _exit(final)


def _start(store: StatusStore, status: RolloutStatus, existing: RolloutStatus | None) -> None:
    """Persist the new run's first status (replacing a finished run of the same name)."""
    if existing is None:
        store.save(status, previous=None)
    else:
        store.save(status, previous=existing, evidence={"action": "new run"})


def _read_weights(router: TrafficRouter, status: RolloutStatus) -> dict[str, int] | None:
    """Weights read back from the router now (not the last recorded ones)."""
    from rollout.errors import RolloutError

    try:
        w = router.get_weights()
    except RolloutError:
        return status.weights.model_dump() if status.weights else None
    return w.model_dump() if w else None


def _override_green(policy: RolloutPolicy, url: str) -> RolloutPolicy:
    from rollout.policy.models import RolloutPolicy as Model

    doc = policy.model_dump(by_alias=True)
    doc["spec"]["targets"]["green"] = {"type": "url", "url": url}
    return Model.model_validate(doc)


def _policy_path(state_dir: Path, name: str) -> Path:
    return state_dir / "policies" / f"{name}.json"


def _save_policy(state_dir: Path, policy: RolloutPolicy) -> None:
    path = _policy_path(state_dir, policy.metadata.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(policy.model_dump_json(by_alias=True))
    os.replace(tmp, path)


def _load_saved(state_dir: Path, name: str, policy_file: Path | None) -> RolloutPolicy:
    from rollout.errors import NotFoundError
    from rollout.policy.loader import load_policy
    from rollout.policy.models import RolloutPolicy as Model

    if policy_file is not None:
        return load_policy(policy_file)
    path = _policy_path(state_dir, name)
    if not path.exists():
        raise NotFoundError(f"no rollout {name!r} in {state_dir} (pass --policy FILE)")
    return Model.model_validate_json(path.read_text())


def _try_policy(state_dir: Path, name: str, policy_file: Path | None
                ) -> tuple[RolloutPolicy | None, str]:
    """The policy, or None and why it could not be loaded (abort/rollback go on without)."""
    from rollout.errors import RolloutError
    from rollout.policy.loader import PolicyError

    try:
        return _load_saved(state_dir, name, policy_file), ""
    except (RolloutError, PolicyError, ValueError, OSError) as e:
        return None, f"{type(e).__name__}: {e}"


def _haproxy(socket_path: Path | None, backend: str) -> TrafficRouter | None:
    from rollout.routers.haproxy import HaproxyRouter

    return None if socket_path is None else HaproxyRouter(socket_path, backend)


def _plan_router(status: RolloutStatus) -> TrafficRouter:
    """The router frozen in the stored plan (local routers only: Kubernetes needs a client).

    Raises:
        BadInputError: the plan names no router, or one this command cannot build alone.
    """
    from pydantic import TypeAdapter, ValidationError

    from rollout.errors import BadInputError
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


def _session_without_policy(name: str, state_dir: Path, router: TrafficRouter | None,
                            why: str) -> Session:
    """Store + router + no analysis: enough to return traffic to blue (abort, rollback)."""
    from rollout.controller import Controller, NoAnalysis
    from rollout.errors import NotFoundError
    from rollout.store import StateStore

    _echo(f"policy unusable ({why}); returning traffic to blue with the router "
          f"{'given on the command line' if router else 'frozen in the stored plan'}")
    store = StateStore(state_dir)
    status = store.load(name)
    if status is None:
        raise NotFoundError(f"no rollout {name!r} has been started")
    router = router or _plan_router(status)
    return Session(None, None, store, Controller(store, router, NoAnalysis(),
                                                 on_transition=_transition), None)


def _act_on_store(name: str, intent: Intent | None, *, policy_file: Path | None,
                  platform: PlatformChoice | None, state_dir: Path,
                  router: TrafficRouter | None) -> tuple[RolloutStatus, StatusStore]:
    from rollout.errors import BadInputError, LockedError, NotFoundError

    policy, why = _try_policy(state_dir, name, policy_file)
    if policy is None and intent not in ("abort", "rollback"):
        raise BadInputError(f"cannot load the policy of {name!r}: {why}")
    if policy is None:
        s = _session_without_policy(name, state_dir, router, why)
    else:
        s = _build(policy, platform=platform, state_dir=state_dir, kubeconfig=None,
                   context=None)
        if router is not None:
            s.controller.router = router
    status = s.store.load(name)
    if status is None:
        raise NotFoundError(f"no rollout {name!r} has been started")
    if intent is not None:
        s.store.request(name, intent)
    _redeliver(s, status)
    if status.terminal:
        if s.notifier is not None:
            s.notifier.close(timeout=10)
        return status, s.store
    try:
        with s.store.lock(name):
            final = s.run(s.store.load(name) or status)
    except LockedError as e:
        _echo(f"{intent or 'resume'} recorded; {e} and will act on it")
        final = status
    return final, s.store


def _redeliver(s: Session, status: RolloutStatus) -> None:
    """Notifications are at least once: the last run may have died between saving a
    transition and announcing it, so announce it again (receivers dedupe by its id)."""
    if s.notifier is None:
        return
    rows = s.store.history(status.name)
    if rows and rows[-1].generation == status.generation:
        s.notifier.redeliver(rows[-1].from_phase, status)


def _blue_without_store(error: Exception, name: str, state_dir: Path, policy_file: Path | None,
                        router: TrafficRouter | None, output: OutputFormat) -> None:
    """The store is unreadable: return traffic to blue anyway, read it back, exit 2."""
    if router is None:
        policy, why = _try_policy(state_dir, name, policy_file)
        if policy is None:
            bad_input(f"{error}\nno router known to return traffic to blue ({why}): pass "
                      f"--haproxy-socket PATH (or --policy FILE)", output=output)
        from rollout.routers import make_router

        router = make_router(policy.spec.router)
    from rollout.controller import BLUE

    router.set_weights(BLUE)
    back = router.get_weights()
    where = f"blue {back.blue} / green {back.green}" if back else "unknown (router can't tell)"
    bad_input(f"{error}\ntraffic returned to blue without the store: router reads back "
              f"{where}", output=output)


def _act(name: str, intent: Intent | None, *, policy_file: Path | None,
         platform: PlatformChoice | None, state_dir: Path, output: OutputFormat,
         haproxy_socket: Path | None = None, haproxy_backend: str = "sd") -> None:
    from rollout.errors import StoreCorruptError

    router = _haproxy(haproxy_socket, haproxy_backend)
    with _errors(output):
        try:
            final, store = _act_on_store(name, intent, policy_file=policy_file,
                                         platform=platform, state_dir=state_dir, router=router)
        except StoreCorruptError as e:
            if intent not in ("abort", "rollback"):
                raise
            _blue_without_store(e, name, state_dir, policy_file, router, output)
            raise  # pragma: no cover - _blue_without_store always exits
        _report(final, store, output)
    raise _exit(final)


PolicyOpt = Annotated[Path | None, typer.Option("--policy", help=(
    "Policy file (default: the copy saved by rollout promote)."))]
PlatformOpt = Annotated[PlatformChoice | None, typer.Option(help="Override spec.platform.")]
SocketOpt = Annotated[Path | None, typer.Option("--haproxy-socket", help=(
    "Return traffic through this HAProxy admin socket, whatever the store or policy say "
    "(works when the store is corrupt)."))]
BackendOpt = Annotated[str, typer.Option("--haproxy-backend", help=(
    "HAProxy backend holding the blue and green servers."))]


def abort(name: Name, policy: PolicyOpt = None, platform: PlatformOpt = None,
          haproxy_socket: SocketOpt = None, haproxy_backend: BackendOpt = "sd",
          state_dir: StateDir = DEFAULT_STATE, output: Output = OutputFormat.text) -> None:
    """Stop the rollout and send all traffic back to blue (phase Aborted); never re-runs an
    analysis, needs no policy."""
    _act(name, "abort", policy_file=policy, platform=platform, state_dir=state_dir,
         output=output, haproxy_socket=haproxy_socket, haproxy_backend=haproxy_backend)


def rollback(name: Name, policy: PolicyOpt = None, platform: PlatformOpt = None,
             haproxy_socket: SocketOpt = None, haproxy_backend: BackendOpt = "sd",
             state_dir: StateDir = DEFAULT_STATE, output: Output = OutputFormat.text) -> None:
    """Roll back to blue now (phase RolledBack), e.g. from Paused; needs no policy."""
    _act(name, "rollback", policy_file=policy, platform=platform, state_dir=state_dir,
         output=output, haproxy_socket=haproxy_socket, haproxy_backend=haproxy_backend)


def resume(name: Name, policy: PolicyOpt = None, platform: PlatformOpt = None,
           state_dir: StateDir = DEFAULT_STATE, output: Output = OutputFormat.text) -> None:
    """Continue a paused or interrupted rollout from its persisted phase."""
    _act(name, "resume", policy_file=policy, platform=platform, state_dir=state_dir,
         output=output)


def status_command(name: Name, watch: Annotated[bool, typer.Option(
        help="Refresh every second until the rollout ends.")] = False,
        state_dir: StateDir = DEFAULT_STATE, output: Output = OutputFormat.text) -> None:
    """Show a rollout's phase, weights and gate verdicts."""
    from rollout.store import StateStore

    with _errors(output):
        store = StateStore(state_dir)
    router: TrafficRouter | None = None
    while True:
        with _errors(output):
            st = store.load(name)
        if st is None:
            bad_input(f"no rollout {name!r} in {state_dir}", output=output)
        router = router or _status_router(st)
        _report(st, store, output, _live(router, st))
        if not watch or st.terminal or st.phase.value == "Paused":
            raise _exit(st)
        time.sleep(1)


def _status_router(status: RolloutStatus) -> TrafficRouter | None:
    from rollout.errors import RolloutError

    try:
        return _plan_router(status)
    except RolloutError:
        return None


def _live(router: TrafficRouter | None, status: RolloutStatus) -> dict[str, Any]:
    """The split the router applies now, beside the recorded one (they differ after a crash)."""
    from rollout.errors import RolloutError

    recorded = status.weights.model_dump() if status.weights else None
    if router is None:
        return {"weights_live": None, "weights_live_error": "router not readable from here"}
    try:
        w = router.get_weights()
    except RolloutError as e:
        return {"weights_live": None, "weights_live_error": f"{type(e).__name__}: {e}"}
    live = w.model_dump() if w else None
    return {"weights_live": live, "weights_differ": live is not None and live != recorded}


def history(name: Name, state_dir: StateDir = DEFAULT_STATE,
            output: Output = OutputFormat.text) -> None:
    """Every recorded transition with its reason (evidence with --output json)."""
    from rollout.store import StateStore

    with _errors(output):
        store = StateStore(state_dir)
        store.load(name)  # a store that lost this rollout is an error, not an empty history
        rows = store.history(name)
    if not rows:
        bad_input(f"no history for {name!r} in {state_dir}", output=output)
    if output is OutputFormat.json:
        print_json([{"generation": r.generation, "from": r.from_phase, "to": r.to_phase,
                     "step": r.step, "reason": r.reason, "at": r.at, "evidence": r.evidence}
                    for r in rows])
        return
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.at))
        typer.echo(f"{when}  #{r.generation:<3} {r.from_phase or '-':>11} -> {r.to_phase:<11} "
                   f"step {r.step}  {r.reason}")


def register(app: typer.Typer) -> None:
    """Add the rollout lifecycle commands."""
    app.command("promote")(promote)
    app.command("status")(status_command)
    app.command("abort")(abort)
    app.command("rollback")(rollback)
    app.command("resume")(resume)
    app.command("history")(history)


