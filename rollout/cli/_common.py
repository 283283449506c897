"""Helpers shared by every command: output format, JSON printing, bad-input exits.

Exit codes are a contract with pipelines: 0 pass/promoted/admitted, 1 fail/rolled back,
2 bad input (nothing was changed), 3 inconclusive/paused, 4 no data, 5 internal error (the
controller failed; after a rollout moved traffic, it was returned to blue and read back).
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERNAL", "ContextOpt", "KubeconfigOpt", "NamespaceOpt",
           "OutputFormat", "bad_input", "print_json"]

EXIT_BAD_INPUT = 2
#: Not 1: pipelines read 1 as "green was judged worse"; a crash must not look like a verdict.
EXIT_INTERNAL = 5


#: The options every command that talks to a cluster takes (same names as kubectl's).
NamespaceOpt = Annotated[str | None, typer.Option("--namespace", "-n", help=(
    "Namespace of the RolloutPolicy (kubernetes; default: the policy's metadata.namespace, "
    "else its blue target's namespace, else 'default')."))]
KubeconfigOpt = Annotated[str | None, typer.Option(help=(
    "kubeconfig file (kubernetes; default $KUBECONFIG, ~/.kube/config, or the pod's "
    "ServiceAccount)."))]
ContextOpt = Annotated[str | None, typer.Option(help="kubeconfig context (kubernetes).")]


class OutputFormat(StrEnum):
    """``--output`` choices."""

    text = "text"
    json = "json"


def print_json(obj: Any) -> None:
    """One JSON object on stdout (stable key order for diffs in pipeline logs)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def bad_input(message: str, *, output: OutputFormat = OutputFormat.text) -> NoReturn:
    """Report bad input on stderr (and as JSON on stdout when asked) and exit 2."""
    if output is OutputFormat.json:
        print_json({"verdict": "error", "error": message})
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)
