"""``rollout promote``, ``status``, ``abort``, ``rollback``, ``resume``, ``history``, and on
Kubernetes ``retry``, ``pause`` and ``list``.

Exit codes: 0 promoted, 1 rolled back or aborted (traffic on blue), 2 bad input (nothing
changed: bad policy, unreachable endpoint, router missing, rollout locked, corrupt store),
3 paused or inconclusive (a human decides: ``rollout resume`` or ``rollout rollback``),
5 internal error (the controller failed; traffic was returned to blue and read back).

The CLI records intents; the controller acts. ``abort``/``rollback``/``resume`` write the
intent, then act themselves if no controller holds the rollout's lock. ``abort`` and
``rollback`` need no policy: the router frozen in the stored plan (or ``--haproxy-socket``
when the store itself is unreadable) is enough to return traffic to blue.

On Kubernetes (``--platform kubernetes``, ``$ROLLOUT_PLATFORM``, or a policy whose
``spec.platform`` is kubernetes) the CLI is a client of ``rollout controller``: ``promote
--policy`` applies the RolloutPolicy object (``--wait`` follows its status and exits as above,
3 also when the wait timed out, 4 when it paused for lack of data), the other verbs record
intents the controller acts on, or read the object and its history ConfigMap
(:mod:`rollout.cluster` holds that logic; this module parses, calls and prints).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from rollout.cli._common import (
    EXIT_INTERNAL,
    ContextOpt,
    KubeconfigOpt,
    NamespaceOpt,
    OutputFormat,
    bad_input,
    print_json,
)

if TYPE_CHECKING:
    from gates.canary.runner import CanaryProgress
    from rollout.cluster import ClusterRollouts, RolloutView
    from rollout.engine import Callbacks
    from rollout.machine import Observation, RolloutStatus
    from rollout.platforms.base import StatusStore
    from rollout.policy.models import RolloutPolicy
    from rollout.routers.base import TrafficRouter
    from rollout.store import Intent, TransitionRecord

__all__ = ["cli_callbacks", "exit_for", "print_status", "register"]

EXIT_BY_PHASE = {"Promoted": 0, "RolledBack": 1, "Aborted": 1, "RollingBack": 1, "Paused": 3}
#: A rollout paused because its gates had nothing (or only errors) to judge: exit 4, no data.
_NO_DATA_VERDICTS = frozenset({"nodata", "error"})
EXIT_UNSETTLED = 3
EXIT_NO_DATA = 4
_ENDS_ON_BLUE = frozenset({"RolledBack", "RollingBack", "Aborted"})


class PlatformChoice(StrEnum):
    """``--platform``: overrides the policy's ``spec.platform``."""

    local = "local"
    kubernetes = "kubernetes"


PlatformOpt = Annotated[PlatformChoice | None, typer.Option(envvar="ROLLOUT_PLATFORM", help=(
    "local or kubernetes (default: the policy's spec.platform, else local). On kubernetes "
    "the CLI is a client of 'rollout controller'."))]
StateDir = Annotated[Path, typer.Option(envvar="ROLLOUT_STATE_DIR", help=(
    "State directory of the local platform (SQLite status, locks, canary records)."))]
Output = Annotated[OutputFormat, typer.Option("--output", "-o", help="text or json.")]
Name = Annotated[str, typer.Argument(help="Rollout name (the policy's metadata.name).")]
DEFAULT_STATE = Path(".state")


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


def cli_callbacks() -> Callbacks:
    from rollout import observability
    from rollout.engine import Callbacks

    printer = observability.log_transition \
        if observability.log_format() is observability.LogFormat.json else _transition
    return Callbacks(log=_echo, on_transition=printer, on_canary_progress=_canary_progress)


@contextmanager
def _errors(output: OutputFormat) -> Iterator[None]:
    """Map our error tree onto exit codes (2 = nothing changed) with a message, no traceback."""
    from rollout.errors import PermanentError, TemporaryError
    from rollout.policy.loader import PolicyError

    try:
        yield
    except PolicyError as e:
        bad_input(f"invalid policy:\n{e}", output=output)
    except PermanentError as e:
        bad_input(f"{type(e).__name__}: {e}", output=output)
    except TemporaryError as e:
        bad_input(f"{type(e).__name__}: {e} (temporary: the same command may succeed later)",
                  output=output)


def print_status(status: RolloutStatus, store: StatusStore, output: OutputFormat,
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


def exit_for(status: RolloutStatus) -> typer.Exit:
    if status.internal_error and status.phase.value in _ENDS_ON_BLUE:
        return typer.Exit(EXIT_INTERNAL)
    return typer.Exit(EXIT_BY_PHASE.get(status.phase.value, EXIT_UNSETTLED))


def _exit_for_view(view: RolloutView) -> int:
    """The exit code of a RolloutPolicy's status, as ``exit_for`` maps a local one; a status
    about an older generation (or none) is no verdict yet: 3."""
    st = view.status
    if st is None or not view.current:
        return EXIT_UNSETTLED
    if st.internal_error and st.phase in _ENDS_ON_BLUE:
        return EXIT_INTERNAL
    if st.phase == "Paused" and not st.awaiting_promotion and st.verdict in _NO_DATA_VERDICTS:
        return EXIT_NO_DATA
    return EXIT_BY_PHASE.get(st.phase, EXIT_UNSETTLED)


def _history_line(r: TransitionRecord) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.at))
    return (f"{when}  #{r.generation:<3} {r.from_phase or '-':>11} -> {r.to_phase:<11} "
            f"step {r.step}  {r.reason}")


def _history_json(rows: list[TransitionRecord], *, evidence: bool) -> list[dict[str, Any]]:
    return [{"generation": r.generation, "from": r.from_phase, "to": r.to_phase,
             "step": r.step, "reason": r.reason, "at": r.at,
             **({"evidence": r.evidence} if evidence else {})} for r in rows]


def _seconds(p95: float | None) -> str:
    return "-" if p95 is None else f"{p95:.3f}s"


def _print_view(view: RolloutView, rows: list[TransitionRecord], output: OutputFormat,
                extra: dict[str, Any] | None = None) -> None:
    """A RolloutPolicy's status and the last transitions of its history ConfigMap."""
    if output is OutputFormat.json:
        print_json({**view.as_json(), **(extra or {}),
                    "history": _history_json(rows, evidence=False)[-50:]})
        return
    s = view.status
    awaiting = " (awaiting promotion)" if s and view.current and s.awaiting_promotion else ""
    typer.echo(f"rollout {view.name} (RolloutPolicy {view.namespace}/{view.name}, generation "
               f"{view.generation}): {view.phase.upper()}{awaiting}")
    if s is None:
        typer.echo("  no status yet: is 'rollout controller' running for this namespace?")
        return
    if not view.current:
        typer.echo(f"  the status below is about generation {s.observed_generation}; the "
                   f"controller has not reported on generation {view.generation} yet")
    typer.echo(f"  reason:  {s.reason}")
    typer.echo(f"  step:    {s.step}/{s.steps} (index/steps, as Argo Rollouts counts)")
    typer.echo(f"  weights: blue {s.blue_weight} / green {s.green_weight} (read back)"
               if s.green_weight is not None else "  weights: not read back yet")
    typer.echo(f"  verdict: {s.verdict or '-'}  (attempt {s.attempt})")
    for g in s.gates:
        typer.echo(f"  gate {g.name}: {g.verdict.upper()}  {g.reason}")
    for i in s.instances:
        typer.echo(f"  {i.arm:<5} {i.pod or i.url} on {i.node or 'node unknown'}: n={i.n} "
                   f"p50 {_seconds(i.p50)} p95 {_seconds(i.p95)} errors {i.errors}  "
                   f"{i.verdict.upper()}")
    if s.conditions:
        typer.echo("  conditions: " + " ".join(f"{c.type}={c.status}" for c in s.conditions))
    if rows:
        typer.echo(f"  history ({s.history_config_map or 'ConfigMap'}), last transitions:")
        for r in rows[-5:]:
            typer.echo(f"    {_history_line(r)}")


def _progress(view: RolloutView) -> None:
    """One line on stderr per news while following a RolloutPolicy."""
    s, who = view.status, f"{view.namespace}/{view.name} generation {view.generation}"
    if s is None:
        _echo(f"{who}: no status yet, waiting for the controller")
    elif not view.current:
        _echo(f"{who}: the status still describes generation {s.observed_generation} "
              f"({s.phase}); waiting for the controller")
    else:
        step = f" step {s.step}/{s.steps}" if s.steps else ""
        w = (f"  weights blue {s.blue_weight}/green {s.green_weight}"
             if s.green_weight is not None else "")
        _echo(f"{s.phase}{step}{w}: {s.reason}")
        for g in s.gates:
            _echo(f"    gate {g.name}: {g.verdict.upper()}  {g.reason}")


def _on_kubernetes(platform: PlatformChoice | None, policy: RolloutPolicy | None) -> bool:
    if platform is not None:
        return platform is PlatformChoice.kubernetes
    return policy is not None and policy.spec.platform == "kubernetes"


def _cluster(policy: RolloutPolicy | None, namespace: str | None, kubeconfig: str | None,
             context: str | None) -> ClusterRollouts:
    from rollout.cluster import namespace_of, open_rollouts

    return open_rollouts(namespace=namespace_of(policy, namespace), kubeconfig=kubeconfig,
                         context=context)


def _history_or_none(rollouts: ClusterRollouts, name: str) -> list[TransitionRecord]:
    """The history for a status display: an unreadable ConfigMap (RBAC, API server away)
    costs the display its trail, never the verdict's exit code."""
    from rollout.errors import RolloutError

    try:
        return rollouts.store.history(name)
    except RolloutError as e:
        _echo(f"history of {name} not readable: {type(e).__name__}: {e}")
        return []


def promote(
    policy_arg: Annotated[Path | None, typer.Argument(metavar="[POLICY]", help=(
        "RolloutPolicy YAML (shorthand for --policy).")), ] = None,
    policy_opt: Annotated[Path | None, typer.Option("--policy", help=(
        "RolloutPolicy YAML."))] = None,
    green: Annotated[str | None, typer.Option(help="Override targets.green.url.")] = None,
    platform: PlatformOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help=(
        "kubernetes: after applying, follow the status until the rollout settles and exit "
        "per its phase (locally promote always waits)."))] = False,
    timeout: Annotated[float, typer.Option(min=0, help=(
        "kubernetes --wait: seconds to follow the status before giving up with exit 3."))
    ] = 3600.0,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for green (local).")
                             ] = 300.0,
    confirm: Annotated[bool, typer.Option("--confirm", help=(
        "Confirm the promotion of rollout NAME (given instead of POLICY) that waits in "
        "Paused/AwaitingPromotion because its policy says promotion.auto: false."))] = False,
    state_dir: StateDir = DEFAULT_STATE,
    output: Output = OutputFormat.text,
) -> None:
    """Roll green out step by step; promote only what the gates prove, else roll back.

    ``rollout promote NAME --confirm`` is the manual promotion gate of a policy with
    ``promotion.auto: false``. On Kubernetes it applies the RolloutPolicy object (the
    controller runs the rollout); ``--wait`` follows it to its verdict.
    """
    from rollout import engine
    from rollout.policy.loader import load_policy

    if confirm:
        if policy_arg is None:
            bad_input("--confirm takes the rollout's name: 'rollout promote NAME --confirm'",
                      output=output)
        _intent(str(policy_arg), "promote", policy_file=policy_opt, platform=platform,
                kube=(namespace, kubeconfig, context), state_dir=state_dir, output=output)
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
    if _on_kubernetes(platform, policy):
        _promote_on_cluster(policy, kube=(namespace, kubeconfig, context), wait=wait,
                            timeout=timeout, output=output)
    with _errors(output):
        cb = cli_callbacks()
        e = engine.build(policy, state_dir=state_dir, kubeconfig=kubeconfig, context=context,
                         platform=platform.value if platform else None, callbacks=cb)
        final = engine.promote(e, state_dir=state_dir, ready_timeout=ready_timeout,
                               callbacks=cb)
        print_status(final, e.store, output, {"weights": e.read_weights(final)})
    raise exit_for(final)


Kube = tuple[str | None, str | None, str | None]


def _promote_on_cluster(policy: RolloutPolicy, *, kube: Kube, wait: bool, timeout: float,
                        output: OutputFormat) -> NoReturn:
    """Apply the RolloutPolicy; with ``wait`` follow it and exit per its verdict."""
    if policy.spec.platform != "kubernetes":  # --platform kubernetes overrides the file
        policy = policy.model_copy(update={"spec": policy.spec.model_copy(
            update={"platform": "kubernetes"})})
    with _errors(output):
        rollouts = _cluster(policy, *kube)
        applied = rollouts.apply(policy)
    view = applied.view
    _echo(f"RolloutPolicy {view.namespace}/{view.name} {applied.action} "
          f"(generation {view.generation})")
    if not wait:
        _print_view(view, [], output, {"applied": applied.action})
        raise typer.Exit(0)
    with _errors(output):
        end = rollouts.follow(view, timeout=timeout, on_update=_progress, log=_echo)
    if end.why == "timeout":
        hint = ("; no status from the controller: is 'rollout controller' running for "
                f"namespace {view.namespace}?" if end.view.status is None else "")
        _echo(f"gave up after {timeout:g}s: {view.name} is {end.view.phase} (exit "
              f"{EXIT_UNSETTLED}){hint}")
    elif end.why == "deleted":
        _echo(f"RolloutPolicy {view.namespace}/{view.name} was deleted (or replaced) while "
              f"waiting: no verdict (exit {EXIT_UNSETTLED})")
    _print_view(end.view, _history_or_none(rollouts, view.name), output,
                {"applied": applied.action, "wait": end.why})
    raise typer.Exit(_exit_for_view(end.view) if end.why == "settled" else EXIT_UNSETTLED)


def _override_green(policy: RolloutPolicy, url: str) -> RolloutPolicy:
    from rollout.policy.models import RolloutPolicy as Model

    doc = policy.model_dump(by_alias=True)
    doc["spec"]["targets"]["green"] = {"type": "url", "url": url}
    return Model.model_validate(doc)


def _cluster_policy(platform: PlatformChoice | None, policy_file: Path | None
                    ) -> tuple[bool, RolloutPolicy | None]:
    """Whether a verb on a named rollout goes to the cluster, and the policy that says so.
    A policy that does not load leaves the decision to the local path, which can act
    without one (abort and rollback)."""
    from rollout.policy.loader import PolicyError, load_policy

    if platform is PlatformChoice.local or policy_file is None:
        return platform is PlatformChoice.kubernetes, None
    try:
        policy = load_policy(policy_file)
    except PolicyError:
        return platform is PlatformChoice.kubernetes, None
    return _on_kubernetes(platform, policy), policy


def _intent(name: str, intent: Intent, *, policy_file: Path | None,
            platform: PlatformChoice | None, kube: Kube, state_dir: Path,
            output: OutputFormat, haproxy_socket: Path | None = None,
            haproxy_backend: str = "sd") -> None:
    """Record ``intent`` for the controller on Kubernetes, else act on it locally."""
    on_cluster, policy = _cluster_policy(platform, policy_file)
    if not on_cluster:
        if intent in ("pause", "retry"):
            bad_input(f"{intent} is an intent for the Kubernetes controller (--platform "
                      f"kubernetes); locally, 'rollout promote' runs a rollout again and "
                      f"on_inconclusive: pause pauses one", output=output)
        _act(name, intent, policy_file=policy_file, platform=platform, state_dir=state_dir,
             output=output, haproxy_socket=haproxy_socket, haproxy_backend=haproxy_backend)
    from rollout.cluster import EXPECT

    with _errors(output):
        view = _cluster(policy, *kube).request(name, intent)
    expect = EXPECT[intent].replace("NAME", name)
    if output is OutputFormat.json:
        print_json({"name": name, "namespace": view.namespace, "intent": intent,
                    "recorded": True, "phase": view.phase, "expect": expect})
    else:
        typer.echo(f"{intent} recorded for RolloutPolicy {view.namespace}/{name} "
                   f"({view.phase}): {expect}")
    raise typer.Exit(0)


def _act(name: str, intent: Intent | None, *, policy_file: Path | None,
         platform: PlatformChoice | None, state_dir: Path, output: OutputFormat,
         haproxy_socket: Path | None = None, haproxy_backend: str = "sd") -> NoReturn:
    from rollout import engine
    from rollout.errors import StoreCorruptError
    from rollout.routers.haproxy import HaproxyRouter

    router = None if haproxy_socket is None else HaproxyRouter(haproxy_socket, haproxy_backend)
    with _errors(output):
        try:
            final, e = engine.act(name, intent, state_dir=state_dir, policy_file=policy_file,
                                  platform=platform.value if platform else None, router=router,
                                  callbacks=cli_callbacks())
        except StoreCorruptError as err:
            if intent not in ("abort", "rollback"):
                raise
            back = engine.restore_blue_without_store(name, state_dir=state_dir,
                                                     policy_file=policy_file, router=router)
            where = f"blue {back.blue} / green {back.green}" if back else \
                "unknown (router can't tell)"
            bad_input(f"{err}\ntraffic returned to blue without the store: router reads back "
                      f"{where}", output=output)
        print_status(final, e.store, output)
    raise exit_for(final)


PolicyOpt = Annotated[Path | None, typer.Option("--policy", help=(
    "Policy file (default: the copy saved by rollout promote; on kubernetes it names the "
    "namespace and platform)."))]
SocketOpt = Annotated[Path | None, typer.Option("--haproxy-socket", help=(
    "Return traffic through this HAProxy admin socket, whatever the store or policy say "
    "(works when the store is corrupt)."))]
BackendOpt = Annotated[str, typer.Option("--haproxy-backend", help=(
    "HAProxy backend holding the blue and green servers."))]


def _to_blue_verb(intent: Intent, doc: str) -> Callable[..., None]:
    """``abort`` and ``rollback``: locally they need no policy and can name the router."""
    def verb(name: Name, policy: PolicyOpt = None, platform: PlatformOpt = None,
             haproxy_socket: SocketOpt = None, haproxy_backend: BackendOpt = "sd",
             namespace: NamespaceOpt = None, kubeconfig: KubeconfigOpt = None,
             context: ContextOpt = None, state_dir: StateDir = DEFAULT_STATE,
             output: Output = OutputFormat.text) -> None:
        _intent(name, intent, policy_file=policy, platform=platform, state_dir=state_dir,
                kube=(namespace, kubeconfig, context), output=output,
                haproxy_socket=haproxy_socket, haproxy_backend=haproxy_backend)

    verb.__doc__ = doc
    return verb


def _verb(intent: Intent, doc: str) -> Callable[..., None]:
    """``resume``, ``retry``, ``pause``: an intent and nothing else."""
    def verb(name: Name, policy: PolicyOpt = None, platform: PlatformOpt = None,
             namespace: NamespaceOpt = None, kubeconfig: KubeconfigOpt = None,
             context: ContextOpt = None, state_dir: StateDir = DEFAULT_STATE,
             output: Output = OutputFormat.text) -> None:
        _intent(name, intent, policy_file=policy, platform=platform, state_dir=state_dir,
                kube=(namespace, kubeconfig, context), output=output)

    verb.__doc__ = doc
    return verb


_VERBS: dict[str, Callable[..., None]] = {
    "abort": _to_blue_verb("abort", (
        "Stop the rollout and send all traffic back to blue (phase Aborted); never re-runs an "
        "analysis, needs no policy.")),
    "rollback": _to_blue_verb("rollback", (
        "Roll back to blue now (phase RolledBack), e.g. from Paused; needs no policy.")),
    "resume": _verb("resume", "Continue a paused or interrupted rollout from its persisted "
                              "phase."),
    "retry": _verb("retry", "Kubernetes: run a RolledBack or Aborted rollout again from step 0 "
                            "(attempt + 1)."),
    "pause": _verb("pause", "Kubernetes: hold traffic where it is (Shifting/Analyzing -> "
                            "Paused) until resume."),
}


def status_command(name: Name, watch: Annotated[bool, typer.Option(
        help="Follow the rollout until it ends or pauses.")] = False,
        platform: PlatformOpt = None, namespace: NamespaceOpt = None,
        kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
        state_dir: StateDir = DEFAULT_STATE, output: Output = OutputFormat.text) -> None:
    """Show a rollout's phase, weights and gate verdicts (on kubernetes also the instances
    measured, with pod and node, and the conditions)."""
    from rollout.engine import live_weights
    from rollout.store import StateStore

    if platform is PlatformChoice.kubernetes:
        _status_on_cluster(name, watch, kube=(namespace, kubeconfig, context), output=output)
    with _errors(output):
        store = StateStore(state_dir)
    router: TrafficRouter | None = None
    while True:
        with _errors(output):
            st = store.load(name)
        if st is None:
            bad_input(f"no rollout {name!r} in {state_dir}", output=output)
        router = router or _status_router(st)
        print_status(st, store, output, live_weights(router, st))
        if not watch or st.terminal or st.phase.value == "Paused":
            raise exit_for(st)
        time.sleep(1)


def _status_on_cluster(name: str, watch: bool, *, kube: Kube, output: OutputFormat
                       ) -> NoReturn:
    with _errors(output):
        rollouts = _cluster(None, *kube)
        view = rollouts.get(name)
        if watch:
            end = rollouts.follow(view, timeout=None, log=_echo,
                                  on_update=lambda v: _print_view(v, [], output))
            if end.why == "deleted":
                _echo(f"RolloutPolicy {view.namespace}/{name} was deleted (or replaced)")
                raise typer.Exit(EXIT_UNSETTLED)
            raise typer.Exit(_exit_for_view(end.view))
    _print_view(view, _history_or_none(rollouts, name), output)
    raise typer.Exit(_exit_for_view(view))


def _status_router(status: RolloutStatus) -> TrafficRouter | None:
    from rollout.engine import plan_router
    from rollout.errors import RolloutError

    try:
        return plan_router(status)
    except RolloutError:
        return None


def history(name: Name, platform: PlatformOpt = None, namespace: NamespaceOpt = None,
            kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
            state_dir: StateDir = DEFAULT_STATE, output: Output = OutputFormat.text) -> None:
    """Every recorded transition with its reason (evidence with --output json)."""
    from rollout.store import StateStore

    with _errors(output):
        if platform is PlatformChoice.kubernetes:
            rows = _cluster(None, namespace, kubeconfig, context).history(name)
        else:
            store = StateStore(state_dir)
            store.load(name)  # a store that lost this rollout is an error, not an empty history
            rows = store.history(name)
    if not rows:
        bad_input(f"no history for {name!r} in {state_dir}", output=output)
    if output is OutputFormat.json:
        print_json(_history_json(rows, evidence=True))
        return
    for r in rows:
        typer.echo(_history_line(r))


def list_command(
    platform: PlatformOpt = None, namespace: NamespaceOpt = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help=(
        "List the RolloutPolicies of every namespace."))] = False,
    kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
    output: Output = OutputFormat.text,
) -> None:
    """Kubernetes: NAME PHASE STEP GREEN VERDICT AGE of the RolloutPolicies in a namespace."""
    if platform is not PlatformChoice.kubernetes:
        bad_input("'rollout list' lists RolloutPolicy objects: pass --platform kubernetes (or "
                  "set ROLLOUT_PLATFORM=kubernetes); locally, 'rollout status NAME'",
                  output=output)
    with _errors(output):
        rollouts = _cluster(None, namespace, kubeconfig, context)
        views = rollouts.list_views(all_namespaces=all_namespaces)
    now = time.time()
    rows = [{"namespace": v.namespace, "name": v.name, "phase": v.phase,
             "step": f"{v.status.step}/{v.status.steps}" if v.status and v.current
             and v.status.steps else "-",
             "green": v.status.green_weight if v.status and v.current else None,
             "verdict": v.status.verdict if v.status and v.current else "",
             "age": _age(now - v.created) if v.created else "-",
             "generation": v.generation,
             "observedGeneration": v.status.observed_generation if v.status else None}
            for v in views]
    if output is OutputFormat.json:
        print_json(rows)
        return
    if not rows:
        where = "any namespace" if all_namespaces else f"namespace {rollouts.namespace}"
        typer.echo(f"no RolloutPolicy in {where}", err=True)
        return
    cols = (["NAMESPACE"] if all_namespaces else []) + ["NAME", "PHASE", "STEP", "GREEN",
                                                         "VERDICT", "AGE"]
    table = [cols] + [[*([str(r["namespace"])] if all_namespaces else []), str(r["name"]),
                       str(r["phase"]), str(r["step"]),
                       "-" if r["green"] is None else str(r["green"]),
                       str(r["verdict"] or "-"), str(r["age"])] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        typer.echo("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _age(seconds: float) -> str:
    """kubectl's short age: 45s, 12m, 5h, 3d."""
    s = max(0, int(seconds))
    for unit, size, limit in (("s", 1, 120), ("m", 60, 120 * 60), ("h", 3600, 48 * 3600)):
        if s < limit:
            return f"{s // size}{unit}"
    return f"{s // 86400}d"


def register(app: typer.Typer) -> None:
    """Add the rollout lifecycle commands."""
    app.command("promote")(promote)
    app.command("status")(status_command)
    for verb, command in _VERBS.items():
        app.command(verb)(command)
    app.command("history")(history)
    app.command("list")(list_command)
