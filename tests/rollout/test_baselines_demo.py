"""Two real demo releases, then ``rollout baselines diff`` between them (the issue's acceptance).

``rollout demo`` (real tiny SD servers, HAProxy, Prometheus) runs the healthy release, then the
tail-latency one in the same root: the baselines of the first survive the second run, the
second is rolled back and names the digest it restored, and the diff prints the capability
(the declared image) and the latency differences (the stalled release's P95 ratio > 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rollout.demo import SCENARIOS, SERVER_ARGS, release_digest

ROOT = Path(__file__).resolve().parents[2]


def rollout(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rollout.cli", *args], capture_output=True,
                          text=True, timeout=420, cwd=ROOT, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_baselines_diff_between_two_demo_releases(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    healthy, tail = (release_digest([*SERVER_ARGS, *SCENARIOS[s]])
                     for s in ("healthy", "tail-latency"))
    phases = []
    for scenario in ("healthy", "tail-latency"):
        run = rollout("demo", "--scenario", scenario, "--root", str(root), "-o", "json")
        assert run.returncode in (0, 1), run.stderr[-3000:]  # promoted or rolled back
        phases.append(json.loads(run.stdout[run.stdout.index("{"):])["phase"])
    assert phases[1] == "RolledBack"  # the stalled release never passes the P95 canary
    assert f"rollout demo: restored {healthy} (demo/sd-server:healthy): baseline of" \
        in run.stderr

    state = str(root / "state")
    listed = json.loads(rollout("baselines", "list", "--state-dir", state, "-o", "json").stdout)
    assert [(b["digest"], b["outcome"]) for b in listed["baselines"]] == [
        (healthy, phases[0]), (tail, "RolledBack")]

    text = rollout("baselines", "diff", healthy[:15], tail[:15], "--state-dir", state)
    assert text.returncode == 1, text.stderr
    assert "capability snapshot:" in text.stdout and "demo/sd-server:tail-latency" in text.stdout
    assert "canary latency of green" in text.stdout and "p95" in text.stdout

    doc = json.loads(rollout("baselines", "diff", healthy, tail, "--state-dir", state,
                             "-o", "json").stdout)
    changed = {(e["category"], e["key"]): (e["blue"], e["green"])  # A, B
               for e in doc["capability"]}
    assert changed[("image", "digest")] == (healthy, tail)
    p50, p95 = doc["latency"]["*"]["shifts"]
    assert p95["ratio"] > 1.2, p95  # 20% of batches stall 0.6 s: the tail moved
    # the interval is honest about the rolled-back release's few samples: it holds the
    # estimate, and where its lower end is bounded at all (enough samples), it excludes 1
    low, high = p95["ratio_ci"]
    assert low is not None and low <= p95["ratio"], p95
    assert high is None or p95["ratio"] <= high, p95  # None: unbounded above (too few samples)
    assert low == 0.0 or low > 1.0, p95
    assert p50["b_ci"][0] is not None and doc["latency"]["*"]["n_a"] > 20
