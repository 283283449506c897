"""``rollout controller``: the in-cluster controller (what the ``deploy/k8s`` Deployment runs).

It waits for the Lease ``--lease-name`` (standby), then reconciles every RolloutPolicy of
``--namespace`` (or of every namespace) through the rollout engine until it gets a signal or
loses the Lease (see :mod:`rollout.operator`). ``/healthz`` and ``/readyz`` are served on
``--health-port`` from the start.

Exit codes: 0 stopped by a signal, 1 lost the Lease (the Pod restarts as a standby), 2 bad
input (no usable kubeconfig, port in use), 5 internal error.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from rollout.cli._common import ContextOpt, KubeconfigOpt, bad_input

__all__ = ["register"]


def controller(
    namespace: Annotated[list[str] | None, typer.Option("--namespace", "-n", help=(
        "Namespace whose RolloutPolicies to reconcile (repeatable); the Lease lives in the "
        "first. The Deployment passes its own: $(POD_NAMESPACE)."))] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help=(
        "Reconcile RolloutPolicies of every namespace (needs the ClusterRole variant); the "
        "Lease lives in $POD_NAMESPACE, else 'default'."))] = False,
    lease_name: Annotated[str, typer.Option(help=(
        "coordination.k8s.io Lease electing the one active replica."))] = "rollout-controller",
    lease_duration: Annotated[float, typer.Option(min=3, help=(
        "Seconds the Lease stays the leader's without renewal: a standby takes over this "
        "long after the leader dies (renewed every third of it)."))] = 15.0,
    health_port: Annotated[int, typer.Option(min=0, max=65535, help=(
        "Port of /healthz and /readyz."))] = 8080,
    identity: Annotated[str | None, typer.Option(help=(
        "Holder identity in the Lease (default: $POD_NAME, else hostname-pid)."))] = None,
    state_dir: Annotated[Path | None, typer.Option(envvar="ROLLOUT_STATE_DIR", help=(
        "Scratch space for evidence files and canary records (default: a directory in the "
        "temporary directory, an emptyDir in the Deployment)."))] = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Reconcile RolloutPolicy objects (leader-elected; run it as the deploy/k8s Deployment)."""
    from rollout.errors import PermanentError
    from rollout.k8s.client import connect
    from rollout.operator.health import Health, serve_health
    from rollout.operator.leader import default_identity
    from rollout.operator.runner import ControllerConfig, run_controller

    if all_namespaces == bool(namespace):
        bad_input("give --namespace NS (repeatable) or --all-namespaces, not both or neither")
    namespaces = list(namespace or [])
    try:
        client = connect(kubeconfig=kubeconfig, context=context)
    except PermanentError as e:
        bad_input(str(e))
    health = Health()
    try:
        serve_health(health, health_port)
    except OSError as e:
        bad_input(f"--health-port {health_port}: {e}")
    config = ControllerConfig(
        namespaces=namespaces,
        lease_namespace=namespaces[0] if namespaces else os.environ.get(
            "POD_NAMESPACE", "default"),
        lease_name=lease_name, lease_duration=lease_duration,
        identity=identity or default_identity(),
        state_dir=state_dir or Path(tempfile.gettempdir()) / "rollout-controller")
    config.state_dir.mkdir(parents=True, exist_ok=True)
    code = run_controller(client, config, health)
    sys.stdout.flush()
    sys.stderr.flush()
    # A rollout's daemon thread may still be inside the engine (it cannot be interrupted);
    # a process that is no longer the leader must not linger to finish it: the new leader
    # resumes it from the store.
    os._exit(code)


def register(app: typer.Typer) -> None:
    """Add ``rollout controller``."""
    app.command("controller")(controller)
