"""The ``rollout`` command line.

Each command lives in its own module and registers itself on :data:`app`; heavy imports
(kubernetes, numpy-heavy statistics) happen inside the commands so ``rollout --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from rollout.cli import (
    admit,
    baselines,
    canary,
    compare,
    controller,
    demo,
    engines,
    image,
    matrix,
    policy,
    report,
    rollouts,
    snapshot,
)
from rollout.observability import LogFormat

__all__ = ["app", "main"]

app = typer.Typer(
    name="rollout",
    help="Blue-green rollouts for Stable Diffusion services that prove green is fast.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
compare.register(app)
canary.register(app)
policy.register(app)
snapshot.register(app)
engines.register(app)
image.register(app)
baselines.register(app)
admit.register(app)
rollouts.register(app)
demo.register(app)
report.register(app)
matrix.register(app)
controller.register(app)


@app.callback()
def _observability(
    log_format: Annotated[LogFormat | None, typer.Option(envvar="ROLLOUT_LOG_FORMAT", help=(
        "Logs on stderr: text (default) or json (one object per line)."))] = None,
    metrics_port: Annotated[int | None, typer.Option(envvar="ROLLOUT_METRICS_PORT", help=(
        "Serve the controller's Prometheus metrics at http://127.0.0.1:PORT/metrics while "
        "the command runs."))] = None,
) -> None:
    """Blue-green rollouts for Stable Diffusion services that prove green is fast."""
    from rollout import observability
    from rollout.cli._common import bad_input

    try:
        observability.configure(log_format=log_format, metrics_port=metrics_port)
    except OSError as e:
        bad_input(f"--metrics-port {metrics_port}: {e}")


def main() -> None:
    """Console-script entry point.

    A traceback exits 5 (internal error), never 1: pipelines read 1 as "green rolled back".
    """
    import sys
    import traceback

    from rollout.cli._common import EXIT_INTERNAL

    try:
        app()
    except Exception:
        traceback.print_exc()
        sys.stderr.write(f"rollout: internal error (exit {EXIT_INTERNAL}); for a rollout, "
                         "traffic was returned to blue and read back where the router "
                         "answered (see the log above)\n")
        sys.exit(EXIT_INTERNAL)
