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
    from rollout.cli.rollouts import cli_callbacks, exit_for, print_status
    from rollout.demo import run_demo
    from rollout.engine import Engine
    from rollout.errors import RolloutError
    from rollout.machine import RolloutStatus
    from rollout.policy.loader import PolicyError

    def on_result(e: Engine, final: RolloutStatus) -> int:
        print_status(final, e.store, output, {"weights": e.read_weights(final)})
        return exit_for(final).exit_code

    try:
        code = run_demo(scenario, root=root, callbacks=cli_callbacks(), on_result=on_result)
    except (RolloutError, PolicyError) as e:
        bad_input(f"{type(e).__name__}: {e}", output=output)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``rollout demo``."""
    app.command("demo")(demo)
