"""``rollout snapshot``: what this machine (or a server) can actually do on its GPUs.

    rollout snapshot [--local | --url URL] [--providers A,B,C] [--logs FILE]... [--output json]
    rollout snapshot diff A B [--output json]      (A, B: snapshot files or server URLs)
    rollout snapshot schema                        (the JSON schema policies/ commits)

Exit codes: 0 done (``diff``: identical), 1 ``diff`` found differences, 2 bad input.
This module also holds what ``rollout admit`` shares: obtaining a snapshot from
``--local``/``--url``/a file, the provider list option and the plain-text table. The
``gates.capability`` imports happen inside the commands (httpx and pydantic models cost
~0.5 s), so ``rollout --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rollout.cli._common import OutputFormat, bad_input, print_json

if TYPE_CHECKING:
    from gates.capability.snapshot import CapabilitySnapshot

__all__ = [
    "DeadlineOption",
    "LogsOption",
    "OutputOption",
    "ProvidersOption",
    "format_table",
    "obtain_snapshot",
    "parse_providers",
    "register",
]

_MAX_CELL = 160

snapshot_app = typer.Typer(
    help="Capture what a GPU service can actually do (providers bound, versions, GPUs).",
    no_args_is_help=False,
)

OutputOption = Annotated[
    OutputFormat, typer.Option("--output", "-o", help="text (a table) or json (one object).")
]
ProvidersOption = Annotated[
    str | None,
    typer.Option(
        "--providers", help="ORT provider order for the probe (default TensorRT,CUDA,CPU)."
    ),
]
DeadlineOption = Annotated[
    float | None,
    typer.Option("--deadline", min=0.1, help="Overall time box of the probes, seconds (30)."),
]
LogsOption = Annotated[
    list[Path] | None,
    typer.Option("--logs", exists=True, dir_okay=False, help="Log file to scan (repeatable)."),
]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) if value else "-"
    return str(value)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 3] + "..."


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table; the last column is neither clipped nor padded (it wraps)."""
    cells = [[*(_clip(_cell(c)) for c in row[:-1]), _cell(row[-1])] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *cells]:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def parse_providers(csv: str | None, output: OutputFormat = OutputFormat.text) -> tuple[str, ...]:
    """``"A,B"`` -> ``("A", "B")``, checked to be ORT provider names; None -> the default."""
    from pydantic import Field, TypeAdapter, ValidationError

    from gates.capability.ort_probe import DEFAULT_PROVIDERS
    from gates.capability.spec import ProviderName

    if csv is None:
        return DEFAULT_PROVIDERS
    names = [p.strip() for p in csv.split(",") if p.strip()]
    adapter = TypeAdapter(Annotated[tuple[ProviderName, ...], Field(min_length=1)])
    try:
        return adapter.validate_python(names)
    except ValidationError as e:
        bad_input(f"--providers {csv!r}: {e.errors()[0]['msg']}", output=output)


def obtain_snapshot(
    *,
    local: bool,
    url: str | None,
    file: Path | None = None,
    providers: Sequence[str] | None = None,
    deadline_s: float | None = None,
    log_files: Sequence[Path] = (),
    output: OutputFormat = OutputFormat.text,
) -> CapabilitySnapshot:
    """The snapshot from exactly one source; exits 2 on conflicting or unreadable input."""
    from gates.capability.collect import (
        DEFAULT_DEADLINE_S,
        SnapshotSourceError,
        collect_local,
        fetch_snapshot,
        load_snapshot,
    )
    from gates.capability.ort_probe import DEFAULT_PROVIDERS

    given = [name for name, on in (("--local", local), ("--url", url), ("--snapshot", file)) if on]
    if len(given) != 1:
        bad_input(
            f"give exactly one of --local, --url, --snapshot (got {given or 'none'})", output=output
        )
    deadline = deadline_s or DEFAULT_DEADLINE_S
    try:
        if url is not None:
            return fetch_snapshot(url, timeout_s=deadline)
        if file is not None:
            return load_snapshot(str(file))
    except SnapshotSourceError as e:
        bad_input(str(e), output=output)
    return collect_local(providers or DEFAULT_PROVIDERS, deadline_s=deadline, log_files=log_files)


@snapshot_app.callback(invoke_without_command=True)
def snapshot(
    ctx: typer.Context,
    local: Annotated[bool, typer.Option("--local", help="Probe this machine (default).")] = False,
    url: Annotated[
        str | None, typer.Option("--url", help="Read a server's GET URL/capabilities.")
    ] = None,
    providers: ProvidersOption = None,
    deadline: DeadlineOption = None,
    logs: LogsOption = None,
    output: OutputOption = OutputFormat.text,
) -> None:
    """Capture a capability snapshot of this machine (or read a server's)."""
    if ctx.invoked_subcommand is not None:
        return
    from gates.capability.diff import snapshot_facts

    snap = obtain_snapshot(
        local=local or url is None,
        url=url,
        providers=parse_providers(providers, output),
        deadline_s=deadline,
        log_files=logs or (),
        output=output,
    )
    if output is OutputFormat.json:
        print_json(snap.model_dump(mode="json"))
        return
    rows = [
        (category, key, value)
        for category, facts in snapshot_facts(snap).items()
        for key, value in facts.items()
    ]
    typer.echo(format_table(("category", "fact", "value"), rows))


@snapshot_app.command("diff")
def diff_command(
    blue: Annotated[str, typer.Argument(help="Blue snapshot: a JSON file or a server URL.")],
    green: Annotated[str, typer.Argument(help="Green snapshot: a JSON file or a server URL.")],
    output: OutputOption = OutputFormat.text,
) -> None:
    """Compare two snapshots by category; exit 1 when they differ."""
    from gates.capability.collect import SnapshotSourceError, load_snapshot
    from gates.capability.diff import diff

    try:
        a, b = load_snapshot(blue), load_snapshot(green)
    except SnapshotSourceError as e:
        bad_input(str(e), output=output)
    result = diff(a, b)
    if output is OutputFormat.json:
        print_json(result.model_dump(mode="json"))
    else:
        same = "equal" if result.fingerprint_equal else "DIFFERENT"
        typer.echo(f"fingerprint: blue {a.fingerprint}  green {b.fingerprint}  ({same})")
        rows = [(e.category, e.key, e.blue, e.green) for e in result.entries]
        table = format_table(("category", "fact", "blue", "green"), rows)
        typer.echo(table if rows else "no differences")
    raise typer.Exit(1 if result.entries else 0)


@snapshot_app.command("schema")
def schema_command() -> None:
    """Print the snapshot's JSON schema (committed as policies/capability-snapshot.schema.json)."""
    from gates.capability.snapshot import snapshot_json_schema

    sys.stdout.write(json.dumps(snapshot_json_schema(), indent=2, sort_keys=True) + "\n")


def register(app: typer.Typer) -> None:
    """Add ``rollout snapshot`` (with ``diff`` and ``schema``) to the CLI."""
    app.add_typer(snapshot_app, name="snapshot")
