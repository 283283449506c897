"""``rollout matrix nodes|render|check``: the version matrix against nodes, Deployments, snapshots.

Exit codes:

* ``nodes``: 0 at least one listed node can run green (every node with ``--all``), 1 none can
  (some cannot, with ``--all``), 2 bad input (matrix, nodes file, cluster access), 4 no node
  listed;
* ``check``: 0 the snapshot is on the matrix, 1 a pin is out of place, 2 bad input;
* ``render``: 0, or 2 for a bad matrix.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rollout.cli._common import OutputFormat, bad_input, print_json

if TYPE_CHECKING:
    from gates.capability.snapshot import CapabilitySnapshot
    from gates.matrix import MatrixSpec, NodeMatch

__all__ = ["register"]

EXIT_NO_NODES = 4

matrix_app = typer.Typer(help=(
    "The version matrix (kind: VersionMatrix, or a policy's spec.matrix) against cluster "
    "nodes, the green Deployment and capability snapshots."), no_args_is_help=True)

MatrixOption = Annotated[Path, typer.Option("--matrix", "-m", help=(
    "A kind: VersionMatrix file, or a policy file with spec.matrix."))]
OutputOption = Annotated[OutputFormat, typer.Option("--output", "-o")]


def _matrix(path: Path, output: OutputFormat) -> tuple[str, MatrixSpec]:
    """The matrix's name and pins; every problem with its line on stderr, exit 2."""
    from rollout.policy.loader import PolicyError, load_matrix

    try:
        doc = load_matrix(path)
    except PolicyError as e:
        if output is OutputFormat.json:
            print_json({"verdict": "error", "error": str(e), "errors": [
                {"file": i.file, "path": i.path, "line": i.line, "message": i.message}
                for i in e.issues]})
        for issue in e.issues:
            typer.echo(f"error: {issue}", err=True)
        raise typer.Exit(2) from None
    return doc.metadata.name, doc.spec


def _read_nodes(source: str | None, kubeconfig: str | None, context: str | None,
                output: OutputFormat) -> list[tuple[str, dict[str, str]]]:
    """(name, labels) of the nodes in ``source`` (a file, ``-`` for stdin) or the cluster."""
    from gates.matrix import MatrixInputError, nodes_from_json

    if source is None:
        from rollout.errors import RolloutError
        from rollout.k8s.client import NODES, connect

        try:
            items = connect(kubeconfig=kubeconfig, context=context).list_objects(NODES, "")
        except RolloutError as e:
            bad_input(f"cannot list the cluster's nodes: {e}", output=output)
        doc: Any = {"items": items}
        where = "the cluster's nodes"
    else:
        where = "stdin" if source == "-" else source
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text("utf-8")
            doc = json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            bad_input(f"--nodes {where}: cannot read JSON: {e}", output=output)
    try:
        return nodes_from_json(doc)
    except MatrixInputError as e:
        bad_input(f"--nodes {where}: {e}", output=output)


def _show_nodes(name: str, found: list[NodeMatch]) -> None:
    from rollout.cli.snapshot import format_table

    rows = [[m.name, "yes" if m.matches else "no",
             "; ".join(f"{x.label}: {x.observed or '<unset>'} (expected {x.expected})"
                       for x in m.mismatches) or "-"] for m in found]
    typer.echo(f"matrix {name}: {sum(m.matches for m in found)} of {len(found)} node(s) can "
               "run green")
    if rows:
        typer.echo(format_table(["NODE", "MATCHES", "MISMATCHES"], rows))


@matrix_app.command("nodes")
def nodes_command(
    matrix: MatrixOption,
    nodes: Annotated[str | None, typer.Option("--nodes", help=(
        "`kubectl get nodes -o json` output: a file, or - for stdin. Default: list the "
        "cluster's nodes (kubeconfig or in-cluster ServiceAccount)."))] = None,
    require_all: Annotated[bool, typer.Option("--all", help=(
        "Exit 0 only when every listed node matches (e.g. a GPU node pool's nodes)."))] = False,
    kubeconfig: Annotated[str | None, typer.Option("--kubeconfig")] = None,
    context: Annotated[str | None, typer.Option("--context")] = None,
    output: OutputOption = OutputFormat.text,
) -> None:
    """Which nodes can run green, by their GPU Feature Discovery labels (exit 0 at least one
    can, 1 none can, 2 bad input, 4 no node). A node without GPU labels never matches."""
    from gates.matrix import match_node

    name, spec = _matrix(matrix, output)
    found = [match_node(spec, n, labels) for n, labels in _read_nodes(nodes, kubeconfig,
                                                                       context, output)]
    if output is OutputFormat.json:
        print_json({"matrix": name, "nodes": [m.to_dict() for m in found]})
    else:
        _show_nodes(name, found)
    if not found:
        raise typer.Exit(EXIT_NO_NODES)
    ok = all(m.matches for m in found) if require_all else any(m.matches for m in found)
    raise typer.Exit(0 if ok else 1)


@matrix_app.command("render")
def render_command(
    matrix: MatrixOption,
    deployment: Annotated[str, typer.Option("--deployment", help=(
        "The Deployment to patch: the slot that gets the release (deploy/k8s/base: sd-green, "
        "or sd-blue when blue is the idle slot)."))] = "sd-green",
    namespace: Annotated[str | None, typer.Option("--namespace", help=(
        "metadata.namespace of the patch (leave out under a kustomization that sets it)."))
    ] = None,
    output: OutputOption = OutputFormat.text,
) -> None:
    """Print the nodeAffinity pinning the matrix's node labels, as a kustomize strategic-merge
    patch of the green Deployment (YAML; JSON with --output json)."""
    import yaml

    from gates.matrix import render_affinity_patch

    name, spec = _matrix(matrix, output)
    patch = render_affinity_patch(spec, deployment=deployment, namespace=namespace)
    if output is OutputFormat.json:
        print_json(patch)
        return
    typer.echo(f"# nodeAffinity of version matrix {name}: `rollout matrix render`; add to a "
               "kustomization's patches:")
    typer.echo(yaml.safe_dump(patch, sort_keys=False).rstrip())


def _snapshot(source: str, output: OutputFormat) -> CapabilitySnapshot:
    """A snapshot file (``rollout snapshot --output json``), a saved ``/capabilities`` body, or
    a server URL."""
    from pydantic import ValidationError

    from gates.capability.collect import SnapshotSourceError, load_snapshot, snapshot_from_document
    from gates.capability.snapshot import CapabilitySnapshot

    try:
        if source.startswith(("http://", "https://")):
            return load_snapshot(source)
        doc = json.loads(Path(source).read_text("utf-8"))
        if isinstance(doc, dict) and "snapshot" in doc and "taken_at" not in doc:
            return snapshot_from_document(doc, source)
        return CapabilitySnapshot.model_validate(doc)
    except (OSError, UnicodeDecodeError, ValueError, SnapshotSourceError) as e:
        what = "not a valid capability snapshot" if isinstance(e, ValidationError) else \
            "cannot read"
        bad_input(f"--snapshot {source}: {what}: {e}", output=output)


@matrix_app.command("check")
def check_command(
    matrix: MatrixOption,
    snapshot: Annotated[str, typer.Option("--snapshot", "-s", help=(
        "Green's capability snapshot: a JSON file from `rollout snapshot --output json`, a "
        "saved /capabilities body, or a server's base URL."))],
    output: OutputOption = OutputFormat.text,
) -> None:
    """Compare a capability snapshot with the matrix; name each pin out of place (field,
    pinned, observed). Exit 0 on the matrix, 1 off it, 2 bad input."""
    from gates.matrix import compare_snapshot

    name, spec = _matrix(matrix, output)
    found = compare_snapshot(spec, _snapshot(snapshot, output))
    if output is OutputFormat.json:
        print_json({"matrix": name, "matches": not found,
                    "violations": [{**vars(v)} for v in found]})
    elif found:
        typer.echo(f"off version matrix {name}:")
        for v in found:
            typer.echo(f"  {v}")
    else:
        typer.echo(f"on version matrix {name}")
    raise typer.Exit(1 if found else 0)


def register(app: typer.Typer) -> None:
    """Add the ``rollout matrix`` group to the CLI."""
    app.add_typer(matrix_app, name="matrix")
