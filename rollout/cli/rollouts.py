"""``rollout promote``, ``status``, ``abort``, ``rollback``, ``resume``, ``history``.

Exit codes: 0 promoted, 1 rolled back or aborted (traffic on blue), 2 bad input (nothing
changed: bad policy, unreachable endpoint, router missing, rollout locked), 3 paused or
inconclusive (a human decides: ``rollout resume`` or ``rollout rollback``).

The CLI records intents; the controller acts. ``abort``/``rollback``/``resume`` write the
intent, then act themselves if no controller holds the rollout's lock.
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

from rollout.cli._common import OutputFormat, bad_input, print_json

if TYPE_CHECKING:
    from gates.canary.runner import CanaryProgress
    from rollout.controller import Controller
    from rollout.machine import Observation, RolloutStatus
    from rollout.notify import Notifier
    from rollout.platforms.base import Platform, StatusStore
    from rollout.policy.models import RolloutPolicy
    from rollout.store import Intent

__all__ = ["register"]

EXIT_BY_PHASE = {"Promoted": 0, "RolledBack": 1, "Aborted": 1, "RollingBack": 1, "Paused": 3}


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

    policy: RolloutPolicy
    platform: Platform
    store: StatusStore
    controller: Controller
    notifier: Notifier


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
    analyzer = PolicyAnalyzer(policy, plat, records_dir=records,
                              on_canary_progress=_canary_progress)
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
    typer.echo(f"  weights: {w}")
    for gate, verdict in status.verdicts.items():
        typer.echo(f"  gate {gate}: {verdict}")


def _exit(status: RolloutStatus) -> typer.Exit:
    return typer.Exit(EXIT_BY_PHASE.get(status.phase.value, 3))


def promote(
    policy_file: Annotated[Path, typer.Argument(metavar="POLICY", help="RolloutPolicy YAML.")],
    green: Annotated[str | None, typer.Option(help="Override targets.green.url.")] = None,
    platform: Annotated[PlatformChoice | None, typer.Option(help="Override spec.platform.")] = None,
    kubeconfig: Annotated[str | None, typer.Option(help="kubeconfig (kubernetes).")] = None,
    context: Annotated[str | None, typer.Option(help="kubeconfig context.")] = None,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for green.")] = 300.0,
    state_dir: StateDir = DEFAULT_STATE,
    output: Output = OutputFormat.text,
) -> None:
    """Roll green out step by step; promote only what the gates prove, else roll back."""
    from rollout.machine import Plan, RolloutStatus
    from rollout.policy.loader import load_policy

    with _errors(output):
        policy = load_policy(policy_file)
        if green is not None:
            policy = _override_green(policy, green)
        s = _build(policy, platform=platform, state_dir=state_dir, kubeconfig=kubeconfig,
                   context=context)
        name = policy.metadata.name
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
                verify=spec.promotion.verify_seconds > 0))
            if existing is not None:
                status = status.model_copy(update={"generation": existing.generation + 1})
            _start(s.store, status, existing)
            _echo(f"rollout {name}: started ({len(spec.steps)} steps, gates: "
                  f"{', '.join(g.name for g in spec.gates)})")
            try:
                final = s.controller.run(status)
                s.platform.finish(final)
            finally:
                s.notifier.close(timeout=10)
        _report(final, s.store, output, {"weights": _read_weights(s, final)})
    raise _exit(final)


def _start(store: StatusStore, status: RolloutStatus, existing: RolloutStatus | None) -> None:
    """Persist the new run's first status (replacing a finished run of the same name)."""
    if existing is None:
        store.save(status, previous=None)
    else:
        store.save(status, previous=existing, evidence={"action": "new run"})


def _read_weights(s: Session, status: RolloutStatus) -> dict[str, int] | None:
    """Weights read back from the router now (not the last recorded ones)."""
    from rollout.errors import RolloutError

    try:
        w = s.controller.router.get_weights()
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


def _act(name: str, intent: Intent | None, *, policy_file: Path | None,
         platform: PlatformChoice | None, state_dir: Path, output: OutputFormat) -> None:
    from rollout.errors import LockedError, NotFoundError

    with _errors(output):
        policy = _load_saved(state_dir, name, policy_file)
        s = _build(policy, platform=platform, state_dir=state_dir, kubeconfig=None,
                   context=None)
        status = s.store.load(name)
        if status is None:
            raise NotFoundError(f"no rollout {name!r} has been started")
        if intent is not None:
            s.store.request(name, intent)
        if status.terminal:
            _report(status, s.store, output)
            raise _exit(status)
        try:
            with s.store.lock(name):
                status = s.store.load(name) or status
                try:
                    final = s.controller.run(status)
                    s.platform.finish(final)
                finally:
                    s.notifier.close(timeout=10)
        except LockedError as e:
            _echo(f"{intent or 'resume'} recorded; {e} and will act on it")
            final = status
        _report(final, s.store, output)
    raise _exit(final)


PolicyOpt = Annotated[Path | None, typer.Option("--policy", help=(
    "Policy file (default: the copy saved by rollout promote)."))]
PlatformOpt = Annotated[PlatformChoice | None, typer.Option(help="Override spec.platform.")]


def abort(name: Name, policy: PolicyOpt = None, platform: PlatformOpt = None,
          state_dir: StateDir = DEFAULT_STATE, output: Output = OutputFormat.text) -> None:
    """Stop the rollout and send all traffic back to blue (phase Aborted)."""
    _act(name, "abort", policy_file=policy, platform=platform, state_dir=state_dir,
         output=output)


def rollback(name: Name, policy: PolicyOpt = None, platform: PlatformOpt = None,
             state_dir: StateDir = DEFAULT_STATE, output: Output = OutputFormat.text) -> None:
    """Roll back to blue now (phase RolledBack), e.g. from Paused."""
    _act(name, "rollback", policy_file=policy, platform=platform, state_dir=state_dir,
         output=output)


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

    store = StateStore(state_dir)
    while True:
        st = store.load(name)
        if st is None:
            bad_input(f"no rollout {name!r} in {state_dir}", output=output)
        _report(st, store, output)
        if not watch or st.terminal or st.phase.value == "Paused":
            raise _exit(st)
        time.sleep(1)


def history(name: Name, state_dir: StateDir = DEFAULT_STATE,
            output: Output = OutputFormat.text) -> None:
    """Every recorded transition with its reason (evidence with --output json)."""
    from rollout.store import StateStore

    rows = StateStore(state_dir).history(name)
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


