"""``rollout policy validate``, ``rollout policy schema`` and ``rollout policy crd``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from rollout.cli._common import EXIT_BAD_INPUT, OutputFormat, print_json

__all__ = ["register", "schema_document"]

policy_app = typer.Typer(help=("Validate policy files; print their JSON Schema or the "
                               "RolloutPolicy CRD."),
                         no_args_is_help=True)


def schema_document() -> dict[str, object]:
    """The JSON Schema of ``RolloutPolicy`` as committed in ``policies/schema.json``."""
    from rollout.policy.models import RolloutPolicy

    doc = RolloutPolicy.model_json_schema(by_alias=True)
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["$id"] = "https://rollout-gates.dev/schema/rolloutpolicy-v1alpha1.json"
    return doc


@policy_app.command("validate")
def validate(
    files: Annotated[list[Path] | None, typer.Argument(
        metavar="[POLICY]...", help="Policy YAML files (shorthand for --policy).")] = None,
    policy: Annotated[list[Path] | None, typer.Option(
        "--policy", help="Policy YAML file; repeat for several.")] = None,
    output: Annotated[OutputFormat, typer.Option("--output", "-o")] = OutputFormat.text,
) -> None:
    """Validate policy files; report every error with its YAML path and line (exit 2).

    Everything that would fail at run time is refused: URLs, durations, quantiles, rates,
    selectors, method/parameter combinations, and the prompt set (resolved against the
    policy file's directory, then read)."""
    from rollout.policy.loader import PolicyError, load_policy

    paths = [*(files or ()), *(policy or ())]
    if not paths:
        typer.echo("give at least one policy: 'rollout policy validate --policy FILE' "
                   "(or FILE...)", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    results = []
    for f in paths:
        try:
            pol = load_policy(f)
            results.append({"file": str(f), "valid": True, "name": pol.metadata.name,
                            "errors": []})
        except PolicyError as e:
            results.append({"file": str(f), "valid": False, "errors": [
                {"path": i.path, "line": i.line, "message": i.message} for i in e.issues]})
            if output is OutputFormat.text:
                for issue in e.issues:
                    typer.echo(str(issue), err=True)
    ok = all(r["valid"] for r in results)
    if output is OutputFormat.json:
        print_json({"valid": ok, "files": results})
    else:
        for r in results:
            if r["valid"]:
                typer.echo(f"{r['file']}: ok ({r['name']})")
    raise typer.Exit(0 if ok else EXIT_BAD_INPUT)


@policy_app.command("schema")
def schema() -> None:
    """Print the policy language's JSON Schema (committed as policies/schema.json)."""
    typer.echo(json.dumps(schema_document(), indent=2))


@policy_app.command("crd")
def crd(
    output: Annotated[OutputFormat, typer.Option("--output", "-o", help=(
        "text: the YAML committed as deploy/k8s/base/crd.yaml; json: the same object."))] = (
        OutputFormat.text),
) -> None:
    """Print the RolloutPolicy CustomResourceDefinition, generated from the policy models.

    Regenerate the committed copy with `rollout policy crd > deploy/k8s/base/crd.yaml`;
    install it with `kubectl apply --server-side -f deploy/k8s/base/crd.yaml`. Exit 5 if a
    model cannot be said as a structural schema (a bug to fix in the model, not your input)."""
    from rollout.k8s.crd import crd as build
    from rollout.k8s.crd import crd_yaml

    if output is OutputFormat.json:
        print_json(build())
    else:
        typer.echo(crd_yaml(), nl=False)


def register(app: typer.Typer) -> None:
    """Add the ``rollout policy`` group to the CLI."""
    app.add_typer(policy_app, name="policy")
