"""``rollout baselines list|show|diff``: the release baselines the controller kept per digest.

    rollout baselines list [--state-dir DIR] [--output json]
    rollout baselines show DIGEST [--state-dir DIR] [--output json]
    rollout baselines diff A B [--confidence 0.95] [--state-dir DIR] [--output json]

DIGEST, A and B are image digests or unique prefixes of one (``sha256:`` optional). ``diff``
compares release A (the older) with B: capability snapshot and execution path differences,
P50/P95 of green's canary latencies per prompt with exact intervals and the B/A ratio with a
Bonferroni interval, and the image audit changes when both releases were audited. Exit codes:
list/show 0; diff 0 when nothing differs, 1 when the snapshot, the path or the image differ or
the all-prompts P50/P95 ratio interval lies wholly off 1; 2 bad input (no such baseline, an
ambiguous prefix, a corrupt file).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from rollout.cli._common import OutputFormat, bad_input, print_json
from rollout.cli.rollouts import DEFAULT_STATE, StateDir
from rollout.cli.snapshot import format_table

if TYPE_CHECKING:
    from rollout.baselines import Baseline, BaselineDiff, BaselineStore

__all__ = ["format_diff", "register", "shifted"]

baselines_app = typer.Typer(help="Release baselines per image digest: list, show, diff.",
                            no_args_is_help=True)
Output = Annotated[OutputFormat, typer.Option("--output", "-o", help="text or json.")]
Digest = Annotated[str, typer.Argument(help="Image digest or a unique prefix (sha256: optional).")]


def _store(state_dir: Any) -> BaselineStore:
    from rollout.baselines import BaselineStore

    return BaselineStore.of(state_dir)


def _find(store: BaselineStore, prefix: str, output: OutputFormat) -> Baseline:
    from rollout.errors import RolloutError

    try:
        return store.find(prefix)
    except RolloutError as e:
        bad_input(str(e), output=output)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


@baselines_app.command("list")
def list_command(state_dir: StateDir = DEFAULT_STATE, output: Output = OutputFormat.text) -> None:
    """Every recorded release, oldest admission first."""
    from rollout.errors import RolloutError

    try:
        rows: list[dict[str, Any]] = [{
            "digest": b.digest, "ref": b.ref, "rollout": b.rollout,
            "admitted_at": b.admitted_at, "outcome": b.outcome,
            "fingerprint": b.capability_snapshot().fingerprint,
            "canary_requests": len(b.latencies().get("*", [])),
            "audited": b.audit is not None} for b in _store(state_dir).all()]
    except RolloutError as e:
        bad_input(str(e), output=output)
    if output is OutputFormat.json:
        print_json({"baselines": rows})
        return
    if not rows:
        typer.echo(f"no baselines under {_store(state_dir).root}")
        return
    typer.echo(format_table(("digest", "ref", "rollout", "admitted (UTC)", "outcome", "canary"),
                            [(r["digest"][:19], r["ref"] or "-", r["rollout"],
                              _when(r["admitted_at"]), r["outcome"] or "-",
                              r["canary_requests"]) for r in rows]))


@baselines_app.command("show")
def show_command(digest: Digest, state_dir: StateDir = DEFAULT_STATE,
                 output: Output = OutputFormat.text) -> None:
    """One release: its image, snapshot versions, execution path, canary latency per prompt."""
    from gates.capability.collect import execution_path
    from gates.compare import summarize
    from rollout.errors import RolloutError

    b = _find(_store(state_dir), digest, output)
    try:
        snap = b.capability_snapshot()
    except RolloutError as e:
        bad_input(str(e), output=output)
    latency = {prompt: summarize(values, arm=prompt).to_dict()
               for prompt, values in b.latencies().items()}
    if output is OutputFormat.json:
        print_json({**b.model_dump(mode="json", exclude={"canary"}), "latency": latency})
        return
    lines = [f"digest       {b.digest}", f"ref          {b.ref or '-'}",
             f"rollout      {b.rollout} (generation {b.generation}), admitted "
             f"{_when(b.admitted_at)} UTC, {b.outcome or 'unfinished'}",
             f"fingerprint  {snap.fingerprint}", "", "versions",
             format_table(("fact", "value"), list(snap.versions.model_dump().items()))]
    path = execution_path(b.pipeline)
    if path:
        lines += ["", "execution path", format_table(("fact", "value"), list(path.items()))]
    if b.audit is not None:
        a = b.audit
        lines += ["", f"image audit  pull {a.pull_size:,} B, unpacked {a.unpacked_size:,} B, "
                  f"{len(a.layers)} layers, user {a.user or 'root'}, "
                  f"{len(a.violations)} violation(s)"]
    lines += ["", "canary latency (green, seconds; 95% intervals)"]
    lines.append(format_table(("prompt", "n", "p50", "p95"), [
        (prompt, s["n"], _ci(s, "p50"), _ci(s, "p95")) for prompt, s in latency.items()])
        if latency else "  none recorded")
    typer.echo("\n".join(lines))


def _ci(summary: dict[str, Any], key: str) -> str:
    value = summary.get(key)
    return "-" if value is None else _interval(value, summary["ci"].get(key, (None, None)))


def _interval(value: float | None, ci: Any) -> str:
    """``1.234 [1.100, 1.400]`` (``[lo, hi]`` alone without a value; ``-`` for no bound)."""
    lo, hi = ci
    return f"{'' if value is None else f'{value:.3f} '}[{_num(lo)}, {_num(hi)}]"


def shifted(d: BaselineDiff) -> bool:
    """Whether the all-prompts P50 or P95 ratio interval lies wholly above or below 1."""
    from rollout.baselines import ALL_PROMPTS

    everything = d.latency.get(ALL_PROMPTS)
    return everything is not None and any(
        lo is not None and hi is not None and (lo > 1 or hi < 1)
        for lo, hi in (s.ratio_ci for s in everything.shifts))


def _num(v: float | None, unit: str = "") -> str:
    return "-" if v is None else f"{v:.3f}{unit}"


def format_diff(d: BaselineDiff, conf_level: float) -> str:
    """The diff as text: capability, execution path, latency table, image changes."""
    lines = [f"A  {d.a}  {d.ref_a or ''}", f"B  {d.b}  {d.ref_b or ''}", "",
             f"capability snapshot: fingerprint {'equal' if d.fingerprint_equal else 'DIFFERENT'}"
             f", {len(d.capability)} fact(s) differ"]
    if d.capability:
        lines.append(format_table(("category", "fact", "A", "B"), [
            (e.category, e.key, e.blue, e.green) for e in d.capability]))
    lines.append(f"execution path: {len(d.execution_path)} fact(s) differ")
    if d.execution_path:
        lines.append(format_table(("fact", "A", "B"), [
            (k, a, b) for k, (a, b) in d.execution_path.items()]))
    lines += ["", f"canary latency of green (seconds; {conf_level:.0%} intervals; B/A ratio "
              "with a Bonferroni interval)"]
    if d.latency_note:
        lines.append(f"  {d.latency_note}")
    rows = [(prompt, f"p{round(s.quantile * 100)}", _interval(s.a, s.a_ci),
             _interval(s.b, s.b_ci), _num(s.ratio, "x"), _interval(None, s.ratio_ci))
            for prompt, shift in d.latency.items() for s in shift.shifts]
    if rows:
        lines.append(format_table(("prompt", "q", "A", "B", "B/A", "ratio ci"), rows))
    if d.image is not None:
        lines += ["", f"image audit: {len(d.image)} field(s) changed"]
        lines += [f"  {k}: {v}" for k, v in d.image.items()]
    else:
        lines += ["", "image audit: not compared (a release was not audited)"]
    return "\n".join(lines)


@baselines_app.command("diff")
def diff_command(
    a: Annotated[str, typer.Argument(help="Release A (the older): digest or prefix.")],
    b: Annotated[str, typer.Argument(help="Release B: digest or prefix.")],
    confidence: Annotated[float, typer.Option(min=0.5, max=0.999, help=(
        "Confidence of every interval."))] = 0.95,
    state_dir: StateDir = DEFAULT_STATE, output: Output = OutputFormat.text,
) -> NoReturn:
    """What changed from release A to B: capability, execution path, latency, image."""
    from rollout.baselines import diff_baselines
    from rollout.errors import RolloutError

    store = _store(state_dir)
    try:
        result = diff_baselines(_find(store, a, output), _find(store, b, output),
                                conf_level=confidence)
    except RolloutError as e:
        bad_input(str(e), output=output)
    differs = bool(result.capability or result.execution_path or result.image) or shifted(result)
    if output is OutputFormat.json:
        print_json({**result.model_dump(mode="json"), "latency_shifted": shifted(result)})
    else:
        typer.echo(format_diff(result, confidence))
    raise typer.Exit(1 if differs else 0)


def register(app: typer.Typer) -> None:
    """Add ``rollout baselines list|show|diff``."""
    app.add_typer(baselines_app, name="baselines")
