"""``rollout report``: one self-contained HTML page with a rollout's evidence.

``rollout report NAME`` reads the latest run of rollout NAME from the state directory (on
Kubernetes, ``--platform kubernetes``: from the RolloutPolicy's history ConfigMap);
``rollout report --records PATH`` reads canary records alone (a ``requests.jsonl`` or a
directory holding some), judged with the parameters given here. Prints the written path.
Exit codes: 0 written, 2 bad input (no such rollout, no records, malformed records).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rollout.cli._common import ContextOpt, KubeconfigOpt, NamespaceOpt, bad_input
from rollout.cli.rollouts import DEFAULT_STATE, PlatformChoice, PlatformOpt, StateDir

__all__ = ["register"]


def report_command(
    name: Annotated[str | None, typer.Argument(help=(
        "Rollout name (the policy's metadata.name); omit with --records."))] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path(
        "report.html"),
    state_dir: StateDir = DEFAULT_STATE,
    records: Annotated[Path | None, typer.Option(help=(
        "Report on canary records instead of a rollout: a requests.jsonl file or a directory "
        "holding some (e.g. STATE/records/NAME)."))] = None,
    quantile: Annotated[float, typer.Option(help="--records: tail quantile judged.")] = 0.95,
    max_ratio: Annotated[float, typer.Option(help="--records: allowed slowdown factor.")] = 1.0,
    alpha: Annotated[float, typer.Option(help="--records: false-rollback bound.")] = 0.01,
    platform: PlatformOpt = None,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Write an HTML report: decision trail, latency distributions, the judge's evidence,
    utilization, capability differences and errors. Opens offline (no network)."""
    from gates.records import RecordsError
    from rollout.errors import RolloutError
    from rollout.report import LatencyGateParams, load_records, load_rollout, write_report

    if (name is None) == (records is None):
        bad_input("give a rollout NAME or --records PATH (one of them)")
    try:
        if records is not None:
            if not (0 < quantile < 1 and 0 < alpha < 0.5 and max_ratio > 0):
                bad_input("need 0 < quantile < 1, 0 < alpha < 0.5 and max-ratio > 0")
            gate = LatencyGateParams("latency", quantile=quantile, alpha=alpha,
                                     max_ratio=max_ratio)
            data = load_records(records, gate=gate)
        else:
            assert name is not None
            store = None
            if platform is PlatformChoice.kubernetes:
                from rollout.cluster import namespace_of, open_rollouts

                store = open_rollouts(namespace=namespace_of(None, namespace),
                                      kubeconfig=kubeconfig, context=context).store
            data = load_rollout(name, state_dir, store=store)
        path = write_report(data, out)
    except (RolloutError, RecordsError) as e:
        bad_input(str(e))
    except OSError as e:
        bad_input(f"cannot write {out}: {e}")
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add ``rollout report``."""
    app.command("report")(report_command)
