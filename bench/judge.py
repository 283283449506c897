"""Monte Carlo benchmark of the latency judges on the synthetic SD latency model.

Usage: ``python bench/judge.py [--reps 500] [--seq-reps N] [--seed N] [--out FILE.md]``

Every scenario of :mod:`gates.stats.simulate` is replicated ``--reps`` times for each fixed-n
method and ``--seq-reps`` times (default 4 x reps: it is cheap, and a false-rollback rate near
1% needs thousands of runs to be told from 1%) for the sequential judge:

* the sequential judge (:func:`gates.stats.sequential.sequential_test`, alpha 0.01) with K = 1
  and K = 10 blue requests per green one, stopped by its own decision or by a budget of
  4000 (K = 1) / 2000 (K = 10) slices (``inconclusive``);
* the fixed-n methods through ``gates.compare`` (alpha 0.01, P95) at n = 80 and n = 320
  requests per arm, collected concurrently (the same load ramp hits both arms): ``threshold``
  (fail if P95 green > 1.1 x P95 blue), ``kayenta`` (Kayenta's defaults, direction
  ``increase``), ``mannwhitney`` (one-sided rank-sum) and ``bootstrap`` (fail if the
  interval of the P95 ratio lies above 1.1);
* the SPRT limit: Wald's SPRT on green's exceedance of blue's *true* P95 (p0 = 0.05 against
  each scenario's exact p1, alpha 0.01, power 0.95), which no judge that must estimate blue's
  P95 can beat; its mean sample size is simulated here.

Seeds are fixed (``--seed``), so the table is reproducible. At most two worker processes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gates.compare import Method, compare
from gates.stats.sequential import sequential_test
from gates.stats.simulate import SCENARIOS, exceedance_probability, simulate
from gates.verdict import Verdict

ALPHA = 0.01
SEQ_BUDGET = {1: 4000, 10: 2000}
FIXED_N = (80, 320)
FIXED_METHODS: tuple[Method, ...] = ("threshold", "kayenta", "mannwhitney", "bootstrap")
_CODES = {Verdict.FAIL: 0, Verdict.PASS: 1, Verdict.INCONCLUSIVE: 2, Verdict.CONTINUE: 2}


@dataclass(frozen=True)
class Task:
    """One chunk of replications of one scenario for one family of methods."""

    family: str  # "seq1", "seq10" or "fixed"
    scenario_index: int
    reps: range
    seed: int


def _rng(task: Task, rep: int) -> np.random.Generator:
    family = {"seq1": 1, "seq10": 10, "fixed": 0}[task.family]
    return np.random.default_rng([task.seed, task.scenario_index, family, rep])


def run_task(task: Task) -> tuple[Task, dict[str, np.ndarray]]:
    """Run ``task``; return per method an array of (verdict code, green requests) rows."""
    sc = SCENARIOS[task.scenario_index]
    out: dict[str, list[tuple[int, int]]] = {}
    for rep in task.reps:
        rng = _rng(task, rep)
        if task.family.startswith("seq"):
            k = int(task.family[3:])
            run = simulate(sc, SEQ_BUDGET[k], rng, blue_per_green=k)
            res = sequential_test(run.green, run.blue, blue_per_green=k, alpha=ALPHA,
                                  max_slices=SEQ_BUDGET[k])
            d = res.decision
            out.setdefault(f"sequential K={k}", []).append((_CODES[d.verdict], d.slices))
            continue
        run = simulate(sc, max(FIXED_N), rng, blue_per_green=1)
        for n in FIXED_N:
            for method in FIXED_METHODS:
                # The field's habit these rows reproduce: a 10% margin for threshold and
                # bootstrap (explicit now; compare() has no hidden tolerance any more).
                margin = 0.1 if method in ("threshold", "bootstrap") else 0.0
                c = compare(run.blue[:n], run.green[:n], method=method, quantile=0.95,
                            alpha=ALPHA, direction="increase",  # direction: kayenta only
                            tolerance=margin)
                out.setdefault(f"{method} n={n}", []).append((_CODES.get(c.verdict, 2), n))
    return task, {m: np.asarray(v, dtype=np.int64) for m, v in out.items()}


def sprt_limit(p1: float, *, p0: float = 0.05, alpha: float = ALPHA, beta: float = 0.05,
               reps: int = 20000, seed: int = 0) -> tuple[float, float]:
    """Mean sample sizes of Wald's SPRT of p0 against p1, under p1 and under p0."""
    upper, lower = np.log((1 - beta) / alpha), np.log(beta / (1 - alpha))
    with np.errstate(divide="ignore"):
        up, down = np.log(p1 / p0), np.log((1 - p1) / (1 - p0))
    rng = np.random.default_rng(seed)
    means = []
    for p in (p1, p0):
        llr, n = np.zeros(reps), np.zeros(reps, dtype=np.int64)
        active = np.arange(reps)
        while active.size:
            llr[active] += np.where(rng.random(active.size) < p, up, down)
            n[active] += 1
            active = active[(llr[active] < upper) & (llr[active] > lower)]
        means.append(float(n.mean()))
    return means[0], means[1]


def _tasks(reps: int, seq_reps: int, seed: int, chunk: int) -> Iterator[Task]:
    for family in ("seq10", "seq1", "fixed"):
        n = reps if family == "fixed" else seq_reps
        size = chunk if family == "fixed" else 4 * chunk
        for i in range(len(SCENARIOS)):
            for lo in range(0, n, size):
                yield Task(family, i, range(lo, min(n, lo + size)), seed)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _wilson_upper(k: int, n: int, z: float = 1.96) -> float:
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float((centre + half) / (1 + z * z / n))


def _n_cell(rows: np.ndarray, code: int, fixed: bool) -> str:
    n = rows[rows[:, 0] == code, 1]
    if n.size == 0:
        return "-"
    if fixed:
        return f"{int(n[0])}"
    return f"{np.median(n):.0f} [{np.quantile(n, 0.95):.0f}]"


def render(results: dict[str, dict[str, np.ndarray]],
           sprt: dict[str, tuple[float, float]]) -> str:
    """The markdown table: one row per method, one column group per scenario."""
    nulls = [s for s in SCENARIOS if not s.regression]
    regs = [s for s in SCENARIOS if s.regression]
    head = ["method", *[f"{s.name}: false rollback" for s in nulls], "null: promoted, n",
            *[f"{s.name}: power, n" for s in regs]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in results[SCENARIOS[0].name]:
        fixed = not m.startswith("sequential")
        cells = [m]
        for s in nulls:
            r = results[s.name][m]
            k = int(np.sum(r[:, 0] == 0))
            cells.append(f"{_pct(k / len(r))} (<= {_pct(_wilson_upper(k, len(r)))})")
        r = results["null"][m]
        promoted = float(np.mean(r[:, 0] == 1))
        inc = float(np.mean(r[:, 0] == 2))
        extra = f", {_pct(inc)} inconcl." if inc else ""
        cells.append(f"{_pct(promoted)}{extra} · {_n_cell(r, 1, fixed)}")
        for s in regs:
            r = results[s.name][m]
            power = float(np.mean(r[:, 0] == 0))
            cells.append(f"{_pct(power)} · {_n_cell(r, 0, fixed)}")
        lines.append("| " + " | ".join(cells) + " |")
    base = sprt["tail+30%"][1]
    cells = ["SPRT limit (blue P95 known)", "1.0% (design)", "-",
             f"95% (design) · {base:.0f} (mean, vs tail+30%)"]
    cells += [f"95% (design) · {sprt[s.name][0]:.0f} (mean)" for s in regs]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def acceptance(results: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """The sequential judge's targets (alpha 0.01), each checked against this run."""
    checks: list[tuple[str, float, float, str]] = []  # (what, value, limit, "<=" or ">=")
    for k, n_tail, n_x15 in ((1, 600, 10), (10, 300, 3)):
        m = f"sequential K={k}"
        for s in ("null", "drift+10%"):
            checks.append((f"{m}: false rollbacks under {s}",
                           float(np.mean(results[s][m][:, 0] == 0)), ALPHA, "<="))
        tail = results["tail+30%"][m]
        checks.append((f"{m}: power on tail+30%", float(np.mean(tail[:, 0] == 0)), 0.95, ">="))
        checks.append((f"{m}: median green requests to roll back tail+30%",
                       float(np.median(tail[tail[:, 0] == 0, 1])), n_tail, "<="))
        x15 = results["cpu-x15"][m]
        worst = float(np.max(np.where(x15[:, 0] == 0, x15[:, 1], 10**9)))
        checks.append((f"{m}: most green requests to roll back cpu-x15", worst, n_x15, "<="))
    null = results["null"]["sequential K=10"]
    checks.append(("sequential K=10: median green requests to promote a healthy release",
                   float(np.median(null[null[:, 0] == 1, 1])), 200, "<="))
    lines = []
    for what, value, limit, op in checks:
        ok = value <= limit if op == "<=" else value >= limit
        shown = _pct(value) if limit < 1 else f"{value:.0f}"
        target = _pct(limit) if limit < 1 else f"{limit:g}"
        lines.append(f"- [{'x' if ok else ' '}] {what}: {shown} (target {op} {target})")
    return lines


LEGEND = """\
Cells: false rollback = share of runs that rolled back a release that is not slower (95% Wilson
upper bound in brackets); power = share of runs rolled back; n = green requests to that
decision, median [P95] over the runs that reached it (fixed-n methods: always n per arm).
The sequential judge with K blue requests per green one uses K x n blue requests (free in a live
canary: they are production traffic). Budgets: 4000 slices (K=1), 2000 (K=10); runs that spend it
are inconclusive. Drift: both arms ramp up +10% over the first 200 slices, then stay.
The SPRT limit row knows blue's true P95 and the scenario's exact p1 (simulated mean n)."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=500,
                    help="replications per scenario for each fixed-n method")
    ap.add_argument("--seq-reps", type=int, default=None,
                    help="replications per scenario for the sequential judge (4 x reps)")
    ap.add_argument("--seed", type=int, default=20261127)
    ap.add_argument("--workers", type=int, default=2, choices=(1, 2))
    ap.add_argument("--chunk", type=int, default=50,
                    help="replications per fixed-n task (x4 for the sequential judge)")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    seq_reps = 4 * args.reps if args.seq_reps is None else args.seq_reps
    tasks = list(_tasks(args.reps, seq_reps, args.seed, args.chunk))
    partial: dict[tuple[str, str], list[np.ndarray]] = {}
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for i, (task, res) in enumerate(pool.imap_unordered(run_task, tasks), 1):
            for m, rows in res.items():
                partial.setdefault((SCENARIOS[task.scenario_index].name, m), []).append(rows)
            print(f"[{time.monotonic() - t0:6.0f}s] {i}/{len(tasks)} {task.family} "
                  f"{SCENARIOS[task.scenario_index].name} reps {task.reps.start}-"
                  f"{task.reps.stop - 1}", flush=True)
    order = [f"sequential K={k}" for k in (1, 10)] + [
        f"{m} n={n}" for m in FIXED_METHODS for n in FIXED_N]
    results = {s.name: {m: np.concatenate(partial[(s.name, m)]) for m in order}
               for s in SCENARIOS}
    sprt = {s.name: sprt_limit(exceedance_probability(s)) for s in SCENARIOS if s.regression}
    wall = time.monotonic() - t0

    table = render(results, sprt)
    cmd = "python bench/judge.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (f"# Latency judges on the synthetic SD model (alpha {ALPHA})\n\n"
              f"- command: `{cmd.strip()}`\n- date: {dt.date.today().isoformat()}\n"
              f"- replications per scenario: {args.reps} for each fixed-n method, "
              f"{seq_reps} for the sequential judge; seed {args.seed}\n"
              f"- wall time: {wall:.0f} s with {args.workers} worker(s) on "
              f"{platform.machine()} ({mp.cpu_count()} cores, shared)\n")
    scen = "\n".join(f"- `{s.name}`: {s.description}" for s in SCENARIOS)
    checks = "\n".join(acceptance(results))
    text = (f"{header}\n{table}\n\n{LEGEND}\n\nTargets of the sequential judge "
            f"(checked on this run):\n{checks}\n\nScenarios:\n{scen}\n")
    print("\n" + text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
