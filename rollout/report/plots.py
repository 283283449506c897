"""The report's pictures: matplotlib figures rendered to inline SVG.

Why SVG inline: the report must open anywhere, offline, years later, as one file; SVG text stays
sharp when zoomed and searchable. Figures are built on :class:`matplotlib.figure.Figure`
directly (no pyplot: no global figure registry, no GUI backend), and every SVG's element ids are
prefixed so several plots in one page cannot resolve each other's clip paths.

Importing this module needs matplotlib (the ``report`` extra); :mod:`rollout.report.html`
renders the tables without it.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import NDArray

from rollout.report.series import JudgeReplay, ecdf
from rollout.report.source import TrailEntry, UtilizationSeries

__all__ = ["ARM_COLORS", "distributions", "judge", "timeline", "utilization"]

ARM_COLORS = {"blue": "#1f6fb4", "green": "#2a9d3a"}
_PHASE_COLORS = {
    "Pending": "#bbbbbb", "Admitting": "#8da0cb", "Shifting": "#a6d854",
    "Analyzing": "#66c2a5", "Paused": "#ffd92f", "Promoting": "#1b9e77",
    "Verifying": "#7570b3", "Promoted": "#1b9e77", "RollingBack": "#e78ac3",
    "RolledBack": "#d95f02", "Aborted": "#e7298a",
}
_VERDICT_COLORS = {"pass": "#1b9e77", "fail": "#d62728", "inconclusive": "#ff9f1c",
                   "continue": "#ff9f1c", "nodata": "#7f7f7f", "error": "#9467bd"}
_RC: dict[Any, Any] = {"svg.fonttype": "none", "svg.hashsalt": "rollout-report", "font.size": 9,
       "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
       "grid.alpha": 0.3}
_ids = itertools.count()
_P = ParamSpec("_P")


def _styled(draw: Callable[_P, str]) -> Callable[_P, str]:
    """Run a plot function under the report's style, so every text and axis it creates (not
    only the figure) gets it."""

    @functools.wraps(draw)
    def styled(*args: _P.args, **kwargs: _P.kwargs) -> str:
        with mpl.rc_context(_RC):
            return draw(*args, **kwargs)

    return styled


def _lit(text: str) -> str:
    """Names from policies and records, printed as they are: a "$" pair would otherwise be
    parsed as mathtext (and an unbalanced one would fail the whole report)."""
    return text.replace("$", r"\$")


def _svg(fig: Figure) -> str:
    """The figure as an ``<svg>`` element ready to inline: no XML prolog or metadata, ids
    unique within the page."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    prefix = f"f{next(_ids)}-"
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}\1)", text)
    return re.sub(r'href="#([^"]+)"', rf'href="#{prefix}\1"', text)


def _figure(width: float, height: float, rows: int = 1, cols: int = 1, *,
            sharex: bool = False) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=sharex)
    return fig, [ax for row in axes for ax in row]


@_styled
def timeline(trail: Sequence[TrailEntry]) -> str:
    """The latest run's phases over time, one coloured band each, with gate verdict marks."""
    fig, (ax,) = _figure(10, 1.9)
    t0 = trail[0].at
    end = max(trail[-1].at - t0, 1e-3)
    stops = [e.at - t0 for e in trail[1:]] + [end + max(end * 0.04, 0.05)]
    for i, (cur, stop) in enumerate(zip(trail, stops, strict=True)):
        start = cur.at - t0
        ax.barh(0, stop - start, left=start, height=0.6,
                color=_PHASE_COLORS.get(cur.to_phase, "#cccccc"), edgecolor="white")
        if stop - start > end * 0.06 or i == len(trail) - 1:
            ax.text(start + (stop - start) / 2, 0, cur.to_phase, ha="center", va="center",
                    fontsize=8)
        for j, (gate, g) in enumerate(cur.gates.items()):
            verdict = str(g.get("verdict", ""))
            ax.plot(cur.at - t0, 0.45 + 0.12 * j, marker="o", markersize=5, linestyle="none",
                    color=_VERDICT_COLORS.get(verdict, "#333333"))
            late = cur.at - t0 > 0.6 * end
            ax.annotate(_lit(f"{gate}: {verdict}"), (cur.at - t0, 0.45 + 0.12 * j),
                        xytext=(-6 if late else 6, 0), textcoords="offset points", fontsize=7,
                        va="center", ha="right" if late else "left")
    ax.set_ylim(-0.4, 0.45 + 0.12 * max((len(e.gates) for e in trail), default=1) + 0.1)
    ax.set_yticks([])
    ax.grid(False, axis="y")
    ax.set_xlabel("seconds since the run started")
    return _svg(fig)


@_styled
def distributions(blue: NDArray[np.float64], green: NDArray[np.float64], *,
                  quantile: float = 0.95) -> str:
    """ECDF (left) and histogram (right) of each arm's judged latencies, quantile marked."""
    fig, (left, right) = _figure(10, 3.4, 1, 2)
    arms = {a: v for a, v in (("blue", blue), ("green", green)) if v.size}
    q = f"P{quantile * 100:g}"
    for arm, values in arms.items():
        e = ecdf(values, arm=arm)
        color = ARM_COLORS[arm]
        left.step(e.x, e.p, where="post", color=color, label=f"{arm} (n={values.size})")
        mark = float(np.quantile(values, quantile))
        left.axvline(mark, color=color, linestyle=":", linewidth=1)
        left.annotate(f"{q} {mark:.3f}s", (mark, quantile), xytext=(4, -12 if arm == "blue"
                                                                    else 4),
                      textcoords="offset points", color=color, fontsize=8)
    left.axhline(quantile, color="#999999", linewidth=0.6)
    left.set_xlabel("latency (s)")
    left.set_ylabel("fraction of requests ≤ x")
    left.set_title("Latency ECDF per arm")
    left.legend(loc="lower right")
    both = np.concatenate(list(arms.values()))
    edges = np.histogram_bin_edges(both, bins="auto")
    if edges.size > 61:
        edges = np.linspace(both.min(), both.max(), 61)
    for arm, values in arms.items():
        right.hist(values, bins=edges.tolist(), histtype="stepfilled", alpha=0.35,
                   color=ARM_COLORS[arm], edgecolor=ARM_COLORS[arm], label=arm)
    right.set_xlabel("latency (s)")
    right.set_ylabel("requests")
    right.set_title("Latency histogram per arm")
    right.legend(loc="upper right")
    return _svg(fig)


@_styled
def judge(replay: JudgeReplay) -> str:
    """The judge's evidence as requests accumulate: running quantile per arm with its band
    (top) and the rollback/promote e-values against their thresholds (bottom)."""
    res = replay.result
    rows = 2 if res is not None else 1
    fig, axes = _figure(10, 3.0 * rows, rows, 1, sharex=True)
    top = axes[0]
    gate = replay.gate
    q = f"P{gate.quantile * 100:g}"
    x = replay.grid
    for arm, rq in (("blue", replay.blue), ("green", replay.green)):
        color = ARM_COLORS[arm]
        top.plot(x, rq.value, color=color, label=f"{arm} running {q}")
        top.fill_between(x, rq.low, rq.high, color=color, alpha=0.15, linewidth=0,
                         label=f"{arm} {rq.conf_level:.0%} band")
    if gate.max_ratio != 1:
        top.plot(x, replay.blue.value * gate.max_ratio, color=ARM_COLORS["blue"],
                 linestyle="--", linewidth=0.8, label=f"blue {q} × maxRatio {gate.max_ratio:g}")
    top.xaxis.set_major_locator(MaxNLocator(integer=True))  # slices are whole
    top.set_ylabel(f"{q} latency (s)")
    top.set_title(f"Gate {_lit(gate.name)}: running {q} per arm (K = {replay.blue_per_green} blue "
                  f"per green)")
    top.legend(loc="best", fontsize=7, ncols=2)
    if res is not None:
        bottom = axes[1]
        t = np.arange(1, res.e_values.size + 1)
        d = res.decision
        bottom.plot(t, res.e_values, color="#d62728", label="rollback evidence E")
        bottom.axhline(d.threshold, color="#d62728", linestyle="--", linewidth=0.8,
                       label=f"rollback threshold {d.threshold:.4g}")
        bottom.plot(t, res.futility_e_values, color="#1b9e77", label="promote evidence F")
        bottom.axhline(d.futility_threshold, color="#1b9e77", linestyle="--", linewidth=0.8,
                       label=f"promote threshold {d.futility_threshold:.4g}")
        bottom.set_yscale("log")
        bottom.set_ylabel("e-value")
        bottom.set_xlabel("green requests judged (slices)")
        bottom.legend(loc="best", fontsize=7, ncols=2)
        if res.decided_at is not None:
            verdict = d.verdict.value
            for ax in axes:
                ax.axvline(res.decided_at, color=_VERDICT_COLORS.get(verdict, "#333333"),
                           linewidth=1.2)
            value = res.e_values[-1] if verdict == "fail" else res.futility_e_values[-1]
            label = f"{verdict} at slice {res.decided_at}"
            if verdict == "fail" and value < d.threshold:
                label += " (fast-fail guard: green slowest of every slice so far)"
            if math.isfinite(value) and value > 0:
                bottom.annotate(label, (res.decided_at, value), xytext=(-6, 6),
                                textcoords="offset points", ha="right", fontsize=8,
                                color=_VERDICT_COLORS.get(verdict, "#333333"))
    else:
        top.set_xlabel("green requests judged (slices)")
    return _svg(fig)


@_styled
def utilization(series: UtilizationSeries) -> str:
    """Each GPU's utilization over the analysis window against the gate's floor."""
    fig, (ax,) = _figure(10, 2.6)
    for gpu, values in series.gpus.items():
        t = np.arange(len(values)) * series.interval_seconds
        ax.plot(t, values, marker=".", label=_lit(f"GPU {gpu}"))
    ax.axhline(series.floor_percent, color="#d62728", linestyle="--",
               label=f"floor {series.floor_percent:g}% ({series.statistic})")
    ax.set_ylim(0, 100)
    ax.set_ylabel("utilization (%)")
    ax.set_xlabel("seconds into the analysis window")
    ax.set_title(_lit(f"Gate {series.gate} ({series.label})"))
    ax.legend(loc="lower right", fontsize=7)
    return _svg(fig)
