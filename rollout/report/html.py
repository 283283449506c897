"""One self-contained HTML page per rollout: the verdict first, then the evidence behind it.

Why this order: a reader deciding whether to trust a rollback needs the outcome and its reason
in the first screen, then the pictures that would convince a sceptic (distributions, the
judge's evidence as requests accumulated, utilization against the floor), then the tables
(capability differences, errors). Everything is inline (CSS, SVG); the page loads nothing, so
it opens offline and can be attached to a ticket as is.

Without matplotlib (the ``report`` extra) the page still renders, with a note where each plot
would be.
"""

from __future__ import annotations

import html
import importlib
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from gates._validation import LatencyInputError, NoDataError
from gates.capability.collect import execution_path
from gates.compare import ArmSummary, summarize
from rollout import __version__
from rollout.report.series import (
    OVERHEAD_TOLERANCE_S,
    ErrorBreakdown,
    JudgeReplay,
    error_breakdown,
    overhead_difference,
    replay_judge,
    timing_split,
)
from rollout.report.source import CanaryRun, ReportData, TrailEntry

__all__ = ["render_report", "write_report"]

_OUTCOME_CLASS = {"Promoted": "good", "RolledBack": "bad", "Aborted": "bad",
                  "RollingBack": "bad", "Paused": "warn"}
_VERDICT_CLASS = {"pass": "good", "fail": "bad", "error": "bad", "inconclusive": "warn",
                  "continue": "warn", "nodata": "muted"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232a;
background:#f5f6f8}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d6d9de;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.meta{color:#5b6470;font-size:12px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:12px 16px;margin:12px 0}
#verdict{border-radius:10px;padding:16px 20px;margin:16px 0;color:#fff}
#verdict .phase{font-size:30px;font-weight:700;letter-spacing:.5px}
#verdict .reason{font-size:15px;margin-top:6px;white-space:pre-wrap}
#verdict.good{background:#1b7f5f}#verdict.bad{background:#b42318}#verdict.warn{background:#b26a00}
#verdict.muted{background:#4b5563}
#verdict ul{margin:8px 0 0;padding-left:20px}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}
th,td{border-bottom:1px solid #eceef1;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.diff td{background:#fff4e5}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;font-weight:600;
color:#fff;margin:1px 2px}
.badge.good{background:#1b7f5f}.badge.bad{background:#b42318}.badge.warn{background:#b26a00}
.badge.muted{background:#6b7280}
.plot svg{width:100%;height:auto;display:block}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;margin:8px 0}
.ok{color:#1b7f5f;font-weight:600}.bad-text{color:#b42318;font-weight:600}
code{font-size:12px;background:#f0f2f5;padding:0 3px;border-radius:3px}
"""


def _e(v: object) -> str:
    return html.escape(str(v), quote=True)


def _badge(verdict: str, title: str = "") -> str:
    cls = _VERDICT_CLASS.get(verdict, "muted")
    tip = f' title="{_e(title)}"' if title else ""
    return f'<span class="badge {cls}"{tip}>{_e(verdict)}</span>'


def _s(v: float | None) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.3f}"


class _Num(str):
    """An escaped table cell holding a number: right-aligned."""

    __slots__ = ()


def _num(v: object) -> _Num:
    return _Num(_e(v))


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], *,
           classes: Iterable[str] | None = None) -> str:
    """A table of already escaped cells (:class:`_Num` cells right-aligned), with an optional
    CSS class per row."""
    cls = iter(classes) if classes is not None else None
    body = []
    for row in rows:
        c = next(cls, "") if cls is not None else ""
        cells = "".join(f'<td class="num">{x}</td>' if isinstance(x, _Num) else f"<td>{x}</td>"
                        for x in row)
        body.append(f'<tr class="{c}">{cells}</tr>' if c else f"<tr>{cells}</tr>")
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _plotter() -> ModuleType | None:
    """:mod:`rollout.report.plots`, or None where matplotlib is not installed."""
    try:
        return importlib.import_module("rollout.report.plots")
    except ImportError:
        return None


def _plot(plots: ModuleType | None, what: str, draw: str, *args: Any, **kw: Any) -> str:
    """The SVG of ``plots.<draw>(*args, **kw)`` in a figure box, or a note saying why not."""
    if plots is None:
        return (f'<div class="note">No {_e(what)} plot: matplotlib is not installed '
                f"(<code>pip install 'rollout-gates[report]'</code>).</div>")
    svg = str(getattr(plots, draw)(*args, **kw))
    return f'<div class="plot" data-plot="{_e(what)}">{svg}</div>'


# -- sections -------------------------------------------------------------------------------


def _verdict(data: ReportData, replays: Mapping[str, list[JudgeReplay]]) -> str:
    lines = []
    for label, reps in replays.items():
        for r in reps:
            if r.result is None:
                continue
            d = r.result.decision
            where = f"at slice {r.result.decided_at}" if r.result.decided_at else \
                f"undecided after {d.slices} slices"
            lines.append(f"{label} · gate {r.gate.name}: {d.verdict.value} {where} "
                         f"(rollback evidence E = {d.e_value:.3g}, threshold "
                         f"{d.threshold:.4g})")
    items = "".join(f"<li>{_e(x)}</li>" for x in lines)
    extra = f"<ul>{items}</ul>" if items else ""
    if data.phase is not None:
        cls = _OUTCOME_CLASS.get(data.phase, "muted")
        return (f'<div id="verdict" class="{cls}"><div class="phase">{_e(data.phase)}</div>'
                f'<div class="reason">{_e(data.reason)}</div>{extra}</div>')
    verdicts = [r.result.decision.verdict.value if r.result.decided_at else "inconclusive"
                for reps in replays.values() for r in reps if r.result is not None]
    worst = next((v for v in ("fail", "inconclusive", "pass") if v in verdicts), "nodata")
    return (f'<div id="verdict" class="{_VERDICT_CLASS[worst]}"><div class="phase">'
            f"Judge (replayed from records): {_e(worst)}</div>{extra}</div>")


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _trail(trail: Sequence[TrailEntry], plots: ModuleType | None) -> str:
    if not trail:
        return ""
    t0 = trail[0].at
    rows = []
    for e in trail:
        w = e.weights
        gates = " ".join(_badge(str(g.get("verdict")), f"{n}: {g.get('reason', '')}")
                         + f" {_e(n)}" for n, g in e.gates.items())
        rows.append([f"{_e(time.strftime('%H:%M:%S', time.localtime(e.at)))}"
                     f"<br><span class='meta'>+{e.at - t0:.1f} s</span>",
                     _num(e.generation), f"{_e(e.from_phase or '—')} → <b>{_e(e.to_phase)}</b>",
                     _num(e.step), _e(f"{w['blue']}/{w['green']}") if w else "—", gates,
                     _e(e.reason)])
    table = _table(["time", "#", "transition", "step", "weights read back (blue/green %)",
                    "gates", "reason"], rows)
    return ('<section id="trail"><h2>Decision trail</h2>'
            + _plot(plots, "timeline", "timeline", trail) + table
            + "</section>")


def _arm_table(summaries: Mapping[str, ArmSummary]) -> str:
    qs = sorted({e.quantile for s in summaries.values() for e in s.quantiles})
    rows = []
    for arm, s in summaries.items():
        cells = [_e(arm), _num(s.n)]
        for q in qs:
            est = s.get(q)
            cells.append("—" if est is None else
                         _num(f"{_s(est.value)} [{_s(est.ci_low)}, {_s(est.ci_high)}]"))
        rows.append(cells)
    return _table(["arm", "judged n", *(f"P{q * 100:g} s [95% CI]" for q in qs)], rows)


def _errors(breakdowns: Sequence[ErrorBreakdown]) -> str:
    kinds = list(breakdowns[0].errors)
    reasons = sorted({k for b in breakdowns for k in b.excluded})
    rows = [[_e(b.arm), _num(b.measured), _num(b.judged),
             _num(f"{b.failed} ({b.failed / b.measured:.1%})" if b.measured else "0"),
             *(_num(b.errors[k]) for k in kinds), *(_num(b.excluded.get(k, 0)) for k in reasons),
             _e(", ".join(f"{s}×{n}" for s, n in b.statuses.items()))]
            for b in breakdowns]
    head = ["arm", "requests", "judged", "failed", *kinds, *(f"excluded: {k}" for k in reasons),
            "HTTP status"]
    out = _table(head, rows)
    details = [(b.arm, d, n) for b in breakdowns for d, n in b.details]
    if details:
        out += "<h4>Most frequent failures</h4>" + _table(
            ["arm", "failure", "count"], [[_e(a), _e(d), _num(n)] for a, d, n in details])
    return out


def _ms(v: float) -> str:
    return f"{v * 1e3:.1f}"


def _server_timing(run: CanaryRun) -> str:
    """Client vs server latency per arm, and a flag when what lies outside the servers
    (network, proxies, the client) differs between the arms."""
    splits = {arm: timing_split(run.rows, arm) for arm in ("blue", "green")}
    head = '<h3>Client vs server latency</h3>'
    if all(s is None for s in splits.values()):
        return (head + "<p class='meta'>No answer carried a <code>Server-Timing</code> header: "
                "client and server time cannot be told apart.</p>")
    rows = [[_e(arm), _e("no Server-Timing") if s is None else _num(f"{s.timed} / {s.judged}"),
             *(["—"] * 6 if s is None else
               [_num(_ms(v)) for v in (*s.client, *s.server, *s.overhead)])]
            for arm, s in splits.items()]
    out = head + _table(["arm", "timed / judged", "client P50 ms", "client P95 ms",
                         "server P50 ms", "server P95 ms", "overhead P50 ms",
                         "overhead P95 ms"], rows)
    out += ("<p class='meta'>Server time: the answer's <code>Server-Timing</code> total (or the "
            "sum of its phases); overhead: client latency minus server time, per request. "
            "The judge decides on client latency, what users feel.</p>")
    blue, green = splits["blue"], splits["green"]
    if blue is None or green is None:
        missing = "blue" if blue is None else "green"
        return out + (f'<div class="note" data-flag="server-timing-missing">Only one arm sent '
                      f"<code>Server-Timing</code> ({_e(missing)} did not): the overhead of "
                      f"the arms cannot be compared.</div>")
    diff = overhead_difference(blue, green)
    if abs(diff) > OVERHEAD_TOLERANCE_S:
        out += (f'<div class="note" data-flag="client-overhead">Client overhead differs between '
                f"the arms: green's median is {_ms(diff)} ms "
                f"{'above' if diff > 0 else 'below'} blue's (flagged beyond "
                f"{_ms(OVERHEAD_TOLERANCE_S)} ms). Part of the latency difference comes from "
                f"outside the servers: network path, proxy or TLS, or a server timing that "
                f"leaves work out.</div>")
    else:
        out += (f"<p class='ok'>Client overhead agrees between the arms (medians "
                f"{_ms(abs(diff))} ms apart, within {_ms(OVERHEAD_TOLERANCE_S)} ms).</p>")
    return out


def _recorded_gates(run: CanaryRun) -> str:
    gates = (run.recorded or {}).get("gates") or []
    if not gates:
        return ""
    rows = [[_e(g.get("name")), _e(g.get("type")), _badge(str(g.get("verdict"))),
             _e(g.get("reason", ""))] for g in gates]
    return "<h4>Gates as the controller recorded them</h4>" + _table(
        ["gate", "type", "verdict", "reason"], rows)


def _instances(recorded: Mapping[str, Any] | None) -> str:
    """What each serving instance served, when a colour was a fleet (a green instance that
    failed is the one to look at: its pod and node)."""
    rows = (recorded or {}).get("instances") or []
    if len(rows) <= 2:
        return ""
    return "<h3>Per instance</h3>" + _table(
        ["arm", "pod", "node", "url", "judged", "P50 s", "P95 s", "failed", "verdict"],
        [[_e(i.get("arm")), _e(i.get("pod") or "-"), _e(i.get("node") or "-"), _e(i.get("url")),
          _num(i.get("n")), _s(i.get("p50")), _s(i.get("p95")), _num(i.get("errors")),
          _badge(str(i.get("verdict"))) if i.get("arm") == "green" else _e(i.get("verdict"))]
         for i in rows])


def _replay_text(r: JudgeReplay) -> str:
    if r.result is None:
        return (f"<p>Gate <b>{_e(r.gate.name)}</b> uses method <code>{_e(r.gate.method)}</code>, "
                f"a fixed-sample test judged once at the end: no trajectory to show.</p>")
    rec = r.gate.recorded or {}
    at = rec.get("decided_at")
    recorded = (f"{rec.get('verdict')}, decided at slice {at}" if at is not None else
                f"{rec.get('verdict')}, undecided after {rec.get('slices')} slices")
    if r.agrees is None:
        check = ""
    elif r.agrees:
        check = f'<p class="ok">✓ The replay reproduces the recorded judge ({_e(recorded)}).</p>'
    else:
        check = (f'<p class="bad-text">✗ The replay differs from the recorded judge (recorded: '
                 f"{_e(recorded)}): these records are not the ones the decision was made "
                 f"on.</p>")
    return (f"<p>Replayed from the records: {_e(r.result.decision.reason)}.</p>{check}")


def _canary(run: CanaryRun, plots: ModuleType | None,
            replays: list[JudgeReplay]) -> str:
    where = f" (green at {run.weight}% of user traffic)" if run.weight is not None else ""
    head = (f'<section class="canary" id="canary-{_e(run.label)}">'
            f"<h2>Canary {_e(run.label)}{where}</h2>")
    rec = run.recorded or {}
    summary = ""
    if rec:
        slices = ", ".join(f"{n} {k}" for k, n in (rec.get("slices") or {}).items())
        summary = (f"<p>{_badge(str(rec.get('verdict')))} {_e(rec.get('reason', ''))}<br>"
                   f"<span class='meta'>stopped by {_e(rec.get('stopped_by'))} after "
                   f"{_e(rec.get('elapsed_s'))} s; slices: {_e(slices)}</span></p>")
    if not run.rows:
        return head + summary + '<div class="note">No request records for this analysis.</div>' \
            + _instances(rec) + _recorded_gates(run) + "</section>"
    blue, green = run.latencies("blue"), run.latencies("green")
    q = run.gates[0].quantile if run.gates else 0.95
    quantiles = tuple(sorted({0.5, 0.95, 0.99, q}))
    summaries = {arm: summarize(v, arm=arm, quantiles=quantiles)
                 for arm, v in (("blue", blue), ("green", green))}
    parts = [head, summary, f"<p class='meta'>records: <code>{_e(run.path)}</code> · K = "
             f"{run.blue_per_green} blue per green</p>", "<h3>Latency per arm</h3>",
             _arm_table(summaries), _server_timing(run), _instances(rec)]
    if blue.size and green.size:
        parts.append(_plot(plots, "latency distributions", "distributions", blue, green,
                           quantile=q))
    for r in replays:
        parts.append(f"<h3>Judge evidence: gate {_e(r.gate.name)} (P{r.gate.quantile * 100:g}, "
                     f"maxRatio {r.gate.max_ratio:g}, alpha {r.gate.alpha:g})</h3>")
        parts.append(_plot(plots, f"judge {r.gate.name}", "judge", r))
        parts.append("<p class='meta'>Bands: exact order-statistic 95% intervals of each "
                     "arm's quantile so far; a band is missing where too few requests bound it. "
                     "The judge rolls back when E reaches its threshold and promotes when F "
                     "reaches its own (anytime-valid: checked after every slice).</p>")
        parts.append(_replay_text(r))
    parts.append("<h3>Errors</h3>")
    parts.append(_errors([error_breakdown(run.rows, arm) for arm in ("blue", "green")]))
    parts.append(_recorded_gates(run))
    parts.append("</section>")
    return "".join(parts)


def _utilization(data: ReportData, plots: ModuleType | None) -> str:
    if not data.utilization:
        return ('<section id="utilization"><h2>GPU utilization</h2><p class="meta">No '
                "utilization samples were recorded for this rollout (no utilization gate, or no "
                "GPU metrics).</p></section>")
    parts = ['<section id="utilization"><h2>GPU utilization</h2>']
    for u in data.utilization:
        parts.append(f"<p>{_badge(u.verdict or 'nodata')} gate <b>{_e(u.gate)}</b> "
                     f"({_e(u.label)}): {_e(u.reason)}</p>")
        if u.gpus:
            parts.append(_plot(plots, f"utilization {u.gate}", "utilization", u))
    parts.append("</section>")
    return "".join(parts)


def _path_facts(pipeline: Mapping[str, Any] | None) -> dict[str, str]:
    """The execution-path facts of one instance's ``/capabilities`` pipeline: exactly those the
    analyzer's ``execution-path`` gate compares."""
    return {k: _fact(v) for k, v in execution_path(pipeline).items()}


def _fact(v: object) -> str:
    if isinstance(v, list | tuple):
        return ", ".join(map(str, v))
    return "—" if v is None else str(v)


def _capability(admission: Mapping[str, Any] | None) -> str:
    parts = ['<section id="capability"><h2>Capability: blue vs green</h2>']
    if admission is None:
        parts.append("<p class='meta'>No admission in this run.</p></section>")
        return "".join(parts)
    gates = admission.get("gates") or {}
    if gates:
        parts.append(_table(["admission gate", "verdict", "reason"], [
            [_e(n), _badge(str(g.get("verdict"))), _e(g.get("reason", ""))]
            for n, g in gates.items()]))
    for url, fi in (admission.get("fault_injection") or {}).items():
        parts.append(f'<div class="note">Green instance {_e(url)} runs with fault injection '
                     f"switched on: {_e(', '.join(f'{k}={v}' for k, v in fi.items()))}.</div>")
    violations = [(url, v) for url, vs in (admission.get("capability") or {}).items() for v in vs]
    if violations:
        parts.append("<h3>Differences found by the capability gates</h3>")
        parts.append(_table(["green instance", "check", "blue / required", "green", "why"], [
            [_e(url), _e(v.get("check")), _e(_fact(v.get("expected"))),
             _e(_fact(v.get("observed"))), _e(v.get("message", ""))] for url, v in violations],
            classes=["diff"] * len(violations)))
    elif admission.get("capability") is not None:
        parts.append("<p class='ok'>The capability gates found no violation: every green "
                     "instance meets the requirements, and facts pinned to blue's are equal."
                     "</p>")
    blue = _path_facts(admission.get("blue_pipeline"))
    for url, pipeline in (admission.get("green_pipeline") or {}).items():
        green = _path_facts(pipeline)
        parts.append(f"<h3>Execution path of green instance {_e(url)}</h3>")
        if not blue:
            parts.append("<p class='meta'>Blue's path was not recorded with this admission; "
                         "the execution-path gate above compared the two.</p>")
            parts.append(_table(["fact", "green"], [[_e(k), _e(v)] for k, v in green.items()]))
            continue
        keys = sorted(green.keys() | blue.keys())
        parts.append(_table(["fact", "blue", "green"],
                            [[_e(k), _e(blue.get(k, "—")), _e(green.get(k, "—"))] for k in keys],
                            classes=["diff" if blue.get(k) != green.get(k) else "" for k in keys]))
    parts.append("</section>")
    return "".join(parts)


def _baselines(data: ReportData) -> str:
    if not data.baselines:
        return ""
    rows = [[_e(colour), f"<code>{_e(digest)}</code>",
             f'<a href="{_e(path.resolve().as_uri())}">{_e(path.name)}</a>' if path
             else "<span class='meta'>not recorded</span>"]
            for colour, digest, path in data.baselines]
    digests = [digest for _, digest, path in data.baselines if path]
    cmd = (f"<p class='meta'>What changed between them: <code>rollout baselines diff "
           f"{_e(digests[0][:19])} {_e(digests[1][:19])}</code></p>" if len(digests) == 2 else "")
    return ('<section id="baselines"><h2>Releases compared</h2>'
            + _table(["colour", "image digest", "baseline"], rows) + cmd + "</section>")


def _replays(data: ReportData) -> dict[str, list[JudgeReplay]]:
    out: dict[str, list[JudgeReplay]] = {}
    for run in data.canaries:
        reps = []
        for gate in run.gates:
            try:
                reps.append(replay_judge(run, gate))
            except (NoDataError, LatencyInputError):
                continue  # the arm table and the error breakdown say why there is nothing
        out[run.label] = reps
    return out


def render_report(data: ReportData, *, now: float | None = None) -> str:
    """The report page for ``data`` as one HTML string (plots inline when matplotlib is
    installed)."""
    plots = _plotter()
    replays = _replays(data)
    title = f"Rollout report: {data.name}"
    notes = "".join(f'<div class="note">{_e(n)}</div>' for n in data.notes)
    body = [
        f"<main><h1>{_e(title)}</h1>",
        f"<div class='meta'>{_e(data.source)} · generated {_e(_clock(now or time.time()))} "
        f"by rollout-gates {_e(__version__)}</div>",
        _verdict(data, replays), notes, _trail(data.trail, plots),
        *(_canary(run, plots, replays.get(run.label, [])) for run in data.canaries),
        _utilization(data, plots) if data.trail else "",
        _capability(data.admission) if data.trail else "",
        _baselines(data),
        "</main>",
    ]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            + "".join(body) + "</body></html>\n")


def write_report(data: ReportData, out: Path) -> Path:
    """Render ``data`` into ``out`` atomically (a reader never sees half a page)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render_report(data), encoding="utf-8")
    os.replace(tmp, out)
    return out

