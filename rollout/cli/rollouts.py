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
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rollout.cli._common import EXIT_INTERNAL, OutputFormat, bad_input, print_json

if TYPE_CHECKING:
    from gates.canary.runner import CanaryProgress
    from rollout.engine import Callbacks
    from rollout.machine import Observation, RolloutStatus
    from rollout.platforms.base import StatusStore
    from rollout.policy.models import RolloutPolicy
    from rollout.routers.base import TrafficRouter
    from rollout.store import Intent

__all__ = ["cli_callbacks", "exit_for", "print_status", "register"]

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
    except (PermanentError, TemporaryError) as e:
        bad_input(f"{type(e).__name__}: {e}", output=output)


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
    from rollout import engine
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
        cb = cli_callbacks()
        e = engine.build(policy, state_dir=state_dir, kubeconfig=kubeconfig, context=context,
                         platform=platform.value if platform else None, callbacks=cb)
        final = engine.promote(e, state_dir=state_dir, ready_timeout=ready_timeout,
                               callbacks=cb)
        print_status(final, e.store, output, {"weights": e.read_weights(final)})
    raise exit_for(final)


def _override_green(policy: RolloutPolicy, url: str) -> RolloutPolicy:
    from rollout.policy.models import RolloutPolicy as Model

    doc = policy.model_dump(by_alias=True)
    doc["spec"]["targets"]["green"] = {"type": "url", "url": url}
    return Model.model_validate(doc)


def _act(name: str, intent: Intent | None, *, policy_file: Path | None,
         platform: PlatformChoice | None, state_dir: Path, output: OutputFormat,
         haproxy_socket: Path | None = None, haproxy_backend: str = "sd") -> None:
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
    from rollout.engine import live_weights
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
        print_status(st, store, output, live_weights(router, st))
        if not watch or st.terminal or st.phase.value == "Paused":
            raise exit_for(st)
        time.sleep(1)


def _status_router(status: RolloutStatus) -> TrafficRouter | None:
    from rollout.engine import plan_router
    from rollout.errors import RolloutError

    try:
        return plan_router(status)
    except RolloutError:
        return None


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


