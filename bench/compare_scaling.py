"""How every ``rollout compare`` method scales with n: wall time and peak memory per call.

Why: a fixed-n method that needs all n^2 pairwise differences or n_resamples x n resampled
values cannot judge a day of traffic; the acceptance bound is 10^6 values per arm in under
60 s and 1 GiB. Each (method, n) runs in a fresh subprocess, so its peak resident memory
(``ru_maxrss``) is its own, imports included; scipy's ``mannwhitneyu`` (asymptotic, no
interval) runs the same way as the anchor of what a rank test costs at all.

Data: blue ~ lognormal(0, 0.25) seconds, green 3 % slower, seeded; quantile 0.95, max ratio 1.1
(Kayenta: ratio 1, as it requires). Run: ``python bench/compare_scaling.py [--max-n 1000000]
[--markdown bench/results/compare_scaling.md]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main", "measure"]

_METHODS = ("sequential", "kayenta", "mannwhitney", "bootstrap", "threshold", "scipy")
_CHILD = """
import json, resource, sys, time
import numpy as np
method, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(n)
blue = rng.lognormal(0.0, 0.25, n)
green = rng.lognormal(0.0, 0.25, n) * 1.03
def hwm():  # this process's own peak (VmHWM); ru_maxrss keeps the spawning parent's at exec
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
base = hwm()
t0 = time.perf_counter()
if method == "scipy":
    from scipy.stats import mannwhitneyu
    verdict = "p=%.3g" % mannwhitneyu(green, blue, alternative="greater",
                                      method="asymptotic").pvalue
else:
    from gates.compare import compare
    ratio = 1.0 if method == "kayenta" else 1.1
    verdict = compare(blue, green, method=method, max_ratio=ratio).verdict.value
print(json.dumps({"s": time.perf_counter() - t0, "verdict": verdict, "base_kib": base,
                  "peak_kib": hwm()}))
"""


def measure(method: str, n: int, timeout_s: float) -> dict[str, object]:
    """Time and peak RSS of one call in a fresh interpreter (``timeout`` past ``timeout_s``)."""
    try:
        p = subprocess.run([sys.executable, "-c", _CHILD, method, str(n)], check=False,
                           capture_output=True, text=True, timeout=timeout_s,
                           cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        return {"method": method, "n": n, "error": f"timeout > {timeout_s:g} s"}
    if p.returncode != 0:
        return {"method": method, "n": n, "error": p.stderr.strip().splitlines()[-1][:80]}
    return {"method": method, "n": n, **json.loads(p.stdout)}


def _table(rows: list[dict[str, object]]) -> str:
    lines = ["| method | n per arm | time (s) | peak RSS (MiB) | verdict |",
             "|---|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['n']:,} | - | - | {r['error']} |")
            continue
        peak = int(str(r["peak_kib"])) / 1024
        lines.append(f"| {r['method']} | {r['n']:,} | {float(str(r['s'])):.2f} | "
                     f"{peak:.0f} | {r['verdict']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table (and write it as Markdown when asked)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-n", type=int, default=10**6)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--methods", default=",".join(_METHODS))
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    sizes = [n for n in (10**3, 10**4, 10**5, 10**6) if n <= args.max_n]
    rows = []
    for method in args.methods.split(","):
        for n in sizes:
            rows.append(measure(method, n, args.timeout))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    table = _table(rows)
    print(table)
    if args.markdown is not None:
        head = (f"# rollout compare: time and peak memory against n\n\n"
                f"`python bench/compare_scaling.py --markdown {args.markdown}` on "
                f"{platform.machine()} ({platform.python_version()}), "
                f"{time.strftime('%Y-%m-%d')}; one fresh process per cell, peak RSS includes "
                "the interpreter and numpy/scipy (~100 MiB). Bound: 10^6 per arm in < 60 s "
                "and < 1 GiB.\n\n")
        args.markdown.write_text(head + table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
