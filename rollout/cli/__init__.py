"""The ``rollout`` command line.

Each command lives in its own module and registers itself on :data:`app`; heavy imports
(kubernetes, numpy-heavy statistics) happen inside the commands so ``rollout --help`` stays fast.
"""

from __future__ import annotations

import typer

from rollout.cli import admit, canary, compare, demo, policy, rollouts, snapshot

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
admit.register(app)
rollouts.register(app)
demo.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
