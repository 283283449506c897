"""``rollout demo``: the embedded local platform end to end (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rollout.cli._common import OutputFormat, bad_input

__all__ = ["register"]


def demo(
    scenario: Annotated[str, typer.Option(help=(
        "healthy, cpu-fallback, ort-fallback, generic-attention, tail-latency or errors."))
    ] = "healthy",
    root: Annotated[Path, typer.Option(help="Where the stack keeps logs and state.")] = Path(
        ".state/demo"),
    output: Annotated[OutputFormat, typer.Option("--output", "-o")] = OutputFormat.text,
) -> None:
    """Start blue and green SD servers, HAProxy and Prometheus, then run rollout promote."""
    from rollout.demo import run_demo
    from rollout.errors import RolloutError

    try:
        code = run_demo(scenario, root=root, extra_promote_args=["--output", output.value])
    except RolloutError as e:
        bad_input(str(e))
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``rollout demo``."""
    app.command("demo")(demo)
