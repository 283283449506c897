"""``rollout admit``: refuse a GPU service that would run on a degraded path.

    rollout admit [--policy P] [--snapshot FILE | --url URL | --local] [--blue SNAPSHOT]
                  [--require-gpus N] [--require-provider NAME]... [--forbid-provider NAME]...
                  [--logs FILE]... [--output json] [-- COMMAND ...]

Exit codes: 0 admitted, 1 violations (itemized), 2 bad input. With ``-- COMMAND`` the
command replaces this process (``os.execvp``) only when admitted: used as a container
entrypoint, a service whose ORT would bind the CPU provider never starts serving.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rollout.cli._common import OutputFormat, bad_input, print_json
from rollout.cli.snapshot import (
    DeadlineOption,
    LogsOption,
    OutputOption,
    ProvidersOption,
    format_table,
    obtain_snapshot,
    parse_providers,
)

if TYPE_CHECKING:
    from gates.capability.spec import CapabilityReport, CapabilityRequirements

__all__ = ["load_capability_requirements", "probe_order", "register"]


def load_capability_requirements(path: Path, gate: str | None = None) -> CapabilityRequirements:
    """The capability gate of a ``RolloutPolicy`` file, or a bare capability-gate document.

    A policy is validated by :func:`rollout.policy.loader.load_policy` (errors with lines).

    Raises:
        rollout.policy.loader.PolicyError: invalid policy file.
        OSError, yaml.YAMLError: unreadable file.
        ValueError: no capability gate (named ``gate``), several, or an invalid bare gate.
    """
    import yaml

    from gates.capability.spec import CapabilityRequirements

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    found: list[CapabilityRequirements]
    if isinstance(data, dict) and data.get("kind") == "RolloutPolicy":
        from gates.registry import capability_gates
        from rollout.policy.loader import load_policy

        found = [g for g in capability_gates(load_policy(path).spec.gates)
                 if gate in (None, g.name)]
    else:
        found = [CapabilityRequirements.model_validate(data)]
    if len(found) != 1:
        which = f" named {gate!r}" if gate else ""
        hint = "" if gate or not found else " (choose one with --gate)"
        raise ValueError(f"{path}: {len(found)} capability gates{which}{hint}")
    return found[0]


def probe_order(requested: tuple[str, ...], required: tuple[str, ...]) -> tuple[str, ...]:
    """The probe's provider order with every required provider in it (ahead of CPU)."""
    from gates.capability.snapshot import CPU_PROVIDER

    missing = [p for p in required if p not in requested]
    cut = requested.index(CPU_PROVIDER) if CPU_PROVIDER in requested else len(requested)
    return (*requested[:cut], *missing, *requested[cut:])


def _requirements(
    policy: Path | None,
    gate: str | None,
    gpus: int | None,
    required: list[str],
    forbidden: list[str],
    output: OutputFormat,
) -> CapabilityRequirements:
    """The policy's gate (or none) with the command-line requirements added."""
    import yaml

    from gates.capability.spec import CapabilityRequirements

    try:
        base = load_capability_requirements(policy, gate) if policy else CapabilityRequirements()
        merged = base.model_dump()
        merged["require_providers"] = tuple(dict.fromkeys([*base.require_providers, *required]))
        merged["forbid_providers"] = tuple(dict.fromkeys([*base.forbid_providers, *forbidden]))
        if gpus is not None:
            merged["min_gpus"] = gpus
        return CapabilityRequirements.model_validate(merged)
    except (OSError, yaml.YAMLError, ValueError) as e:  # PolicyError is a ValueError
        bad_input(str(e), output=output)


def _show(report: CapabilityReport, output: OutputFormat) -> None:
    if output is OutputFormat.json:
        print_json(report.model_dump(mode="json"))
        return
    if report.admitted:
        typer.echo(f"admitted (fingerprint {report.fingerprint})")
        return
    n = len(report.violations)
    typer.echo(f"refused: {n} violation(s) (fingerprint {report.fingerprint})")
    rows = [(v.check, v.expected, v.observed, v.message) for v in report.violations]
    typer.echo(format_table(("check", "expected", "observed", "message"), rows))


# Long by its option declarations (typer reads them from the signature); the body is short.
def admit_command(
    policy: Annotated[
        Path | None,
        typer.Option("--policy", exists=True, dir_okay=False, help="Policy (or gate) file."),
    ] = None,
    gate: Annotated[
        str | None, typer.Option("--gate", help="Which capability gate of the policy (name).")
    ] = None,
    snapshot_file: Annotated[
        Path | None, typer.Option("--snapshot", help="Green's snapshot (JSON file).")
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Green server: reads GET URL/capabilities.")
    ] = None,
    local: Annotated[bool, typer.Option("--local", help="Probe this machine.")] = False,
    blue: Annotated[
        str | None,
        typer.Option("--blue", help="Blue's snapshot (file or URL), for same-as-blue pins."),
    ] = None,
    require_gpus: Annotated[
        int | None, typer.Option("--require-gpus", min=0, help="GPUs NVML must list.")
    ] = None,
    require_provider: Annotated[
        list[str] | None,
        typer.Option("--require-provider", help="ORT provider that must bind (repeatable)."),
    ] = None,
    forbid_provider: Annotated[
        list[str] | None,
        typer.Option("--forbid-provider", help="ORT provider that must not (repeatable)."),
    ] = None,
    providers: ProvidersOption = None,
    logs: LogsOption = None,
    deadline: DeadlineOption = None,
    output: OutputOption = OutputFormat.text,
    command: Annotated[
        list[str] | None, typer.Argument(help="After --: the command to exec when admitted.")
    ] = None,
) -> None:
    """Admit or refuse green on its capabilities; with -- COMMAND, exec it only if admitted.
    Exit 0 admitted, 1 violations, 2 bad input."""
    from gates.capability.collect import SnapshotSourceError, load_snapshot, scan_log_files
    from gates.capability.requirements import check_capability
    from gates.capability.spec import BaselineRequiredError

    req = _requirements(
        policy, gate, require_gpus, require_provider or [], forbid_provider or [], output
    )
    green = obtain_snapshot(
        local=local,
        url=url,
        file=snapshot_file,
        providers=probe_order(parse_providers(providers, output), req.require_providers),
        deadline_s=deadline,
        output=output,
    )
    try:
        baseline = load_snapshot(blue, timeout_s=deadline or 10.0) if blue else None
        hits = scan_log_files(logs or [], req.log_phrases())
        report = check_capability(req, green, blue=baseline, log_hits=hits)
    except (SnapshotSourceError, OSError, BaselineRequiredError) as e:
        bad_input(str(e), output=output)
    _show(report, output)
    if not report.admitted:
        raise typer.Exit(1)
    if command:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execvp(command[0], command)
        except OSError as e:
            bad_input(f"cannot exec {command[0]!r}: {e}")


def register(app: typer.Typer) -> None:
    """Add ``rollout admit`` to the CLI."""
    app.command("admit")(admit_command)
