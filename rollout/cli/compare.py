"""``rollout compare``: judge two latency files offline with any method."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rollout.cli._common import OutputFormat, bad_input, print_json

if TYPE_CHECKING:
    from collections.abc import Callable

    from gates.compare import ArmSummary, Comparison
    from gates.records import LatencyRecords

__all__ = ["register"]


class MethodChoice(StrEnum):
    """``--method`` choices (see docs/statistics.md)."""

    sequential = "sequential"
    kayenta = "kayenta"
    mannwhitney = "mannwhitney"
    bootstrap = "bootstrap"
    threshold = "threshold"


class DirectionChoice(StrEnum):
    """Kayenta's metric direction."""

    increase = "increase"
    decrease = "decrease"
    either = "either"


def compare_command(
    blue: Annotated[Path, typer.Option(help="Blue (current) latencies: JSON array, JSON Lines "
                                       "with latency_s, or CSV with a latency_s column.")],
    green: Annotated[Path, typer.Option(help="Green (new) latencies, same formats.")],
    method: Annotated[MethodChoice, typer.Option(help="Statistical method.")] = (
        MethodChoice.sequential),
    quantile: Annotated[float, typer.Option(help="Tail quantile judged.")] = 0.95,
    max_ratio: Annotated[float, typer.Option(help="Allowed green/blue slowdown factor.")] = 1.0,
    alpha: Annotated[float, typer.Option(help="False-rollback bound.")] = 0.01,
    blue_per_green: Annotated[int, typer.Option(
        help="Sequential: K blue requests per green one (blue[K*i:K*(i+1)] pairs green[i]).")] = 1,
    fraction: Annotated[float, typer.Option(help="Kayenta: effect margin fraction.")] = 0.25,
    confidence: Annotated[float | None, typer.Option(help=(
        "Kayenta: confidence level of its two-sided interval; default 1 - 2 x alpha (0.98).")
    )] = None,
    direction: Annotated[DirectionChoice, typer.Option(help=(
        "Kayenta: which change fails; increase (default, as a policy's latency gate: a faster "
        "green is no failure), decrease, or either (Kayenta's own default).")),
    ] = DirectionChoice.increase,
    tolerance: Annotated[float, typer.Option(help=(
        "Explicit slack: every method allows green up to max_ratio x (1 + tolerance) x blue "
        "(kayenta: only 1)."))] = 0.0,
    output: Annotated[OutputFormat, typer.Option("--output", "-o", help="text or json.")] = (
        OutputFormat.text),
) -> None:
    """Compare green's latencies with blue's. Exit 0 pass, 1 fail, 2 bad input,
    3 inconclusive, 4 no data."""
    from gates._validation import LatencyInputError
    from gates.compare import compare
    from gates.records import RecordsError, load_latencies
    from gates.verdict import EXIT_CODES

    try:
        b, g = (_load(load_latencies, path) for path in (blue, green))
        result = compare(b.latencies, g.latencies, method=method.value, quantile=quantile,
                         max_ratio=max_ratio, alpha=alpha, blue_per_green=blue_per_green,
                         fraction=fraction, confidence=confidence, direction=direction.value,
                         tolerance=tolerance)
    except RecordsError as e:
        bad_input(str(e), output=output)
    except (LatencyInputError, ValueError) as e:
        bad_input(str(e), output=output)
    if output is OutputFormat.json:
        doc = result.to_dict()
        doc["blue"]["errors"] = b.errors
        doc["green"]["errors"] = g.errors
        print_json(doc)
    else:
        _print_text(result, b.errors, g.errors)
    raise typer.Exit(EXIT_CODES[result.verdict])


def _load(load: Callable[[Path], LatencyRecords], path: Path) -> LatencyRecords:
    """``load(path)``, with what the reader lets through on hostile content (a number beyond
    any float, nesting deeper than the parser's stack) as bad input naming the file.

    Raises:
        ValueError: the file is not a usable latency file.
    """
    try:
        return load(path)
    except (OverflowError, RecursionError) as e:
        raise ValueError(f"{path}: unreadable latency file: {type(e).__name__}: {e}") from None


def _fmt(v: float | None) -> str:
    return "-" if v is None else ("inf" if v == float("inf") else f"{v:.3f}")


def _arm_row(name: str, s: ArmSummary, errors: int) -> str:
    cells = [f"{name:<6}", f"{s.n:>6}", f"{errors:>6}"]
    for q in (0.5, 0.95, 0.99):
        e = s.get(q)
        cells.append(f"{_fmt(e.value if e else None):>8} [{_fmt(e.ci_low if e else None)}, "
                     f"{_fmt(e.ci_high if e else None)}]".ljust(28))
    return "  ".join(cells)


def _print_text(r: Comparison, blue_errors: int, green_errors: int) -> None:
    typer.echo(f"verdict: {r.verdict.value.upper()}   (method {r.method})")
    typer.echo(f"reason:  {r.reason}")
    typer.echo("")
    head = ["arm   ", "     n", "errors"] + [
        f"{p:>8} [95% CI]".ljust(28) for p in ("P50", "P95", "P99")]
    typer.echo("  ".join(head))
    typer.echo(_arm_row("blue", r.blue, blue_errors))
    typer.echo(_arm_row("green", r.green, green_errors))
    if r.ratio is not None:
        typer.echo(f"\ngreen/blue P{r.ratio.quantile * 100:g} ratio: {r.ratio.estimate:.3f} "
                   f"[{_fmt(r.ratio.ci_low)}, {_fmt(r.ratio.ci_high)}] "
                   f"({r.ratio.conf_level:.0%} CI)")
    if r.mann_whitney is not None:
        mw = r.mann_whitney
        typer.echo(f"rank-sum: W = {mw.statistic:g}, p = {mw.p_value:.4g}, shift = "
                   f"{mw.estimate:.4f} s [{_fmt(mw.ci_low)}, {_fmt(mw.ci_high)}]")
    if r.decided_at is not None:
        typer.echo(f"sequential: decided after {r.decided_at} green requests")


def register(app: typer.Typer) -> None:
    """Add ``rollout compare`` to the CLI."""
    app.command("compare")(compare_command)
