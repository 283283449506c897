"""`rollout demo` end to end: real tiny SD servers, HAProxy, Prometheus, rollout promote.

Healthy green is promoted with weights 0/100 read back from HAProxy; every degraded scenario is
rolled back with 100/0 read back and the evidence names the gate that caught it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_stack import ROOT, last_json

EXPECTED = {
    "healthy": ("Promoted", {"blue": 0, "green": 100}, None),
    "cpu-fallback": ("RolledBack", {"blue": 100, "green": 0}, "green-ready"),
    "ort-fallback": ("RolledBack", {"blue": 100, "green": 0}, "green-ready"),
    "generic-attention": ("RolledBack", {"blue": 100, "green": 0}, "execution-path"),
    "tail-latency": ("RolledBack", {"blue": 100, "green": 0}, "p95"),
    "errors": ("RolledBack", {"blue": 100, "green": 0}, "errors"),
}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(EXPECTED))
def test_demo_scenario(scenario: str, tmp_path: Path) -> None:
    phase, weights, breached = EXPECTED[scenario]
    res = subprocess.run(
        [sys.executable, "-m", "rollout.cli", "demo", "--scenario", scenario, "--root",
         str(tmp_path / "demo"), "--output", "json"],
        capture_output=True, text=True, timeout=400, cwd=ROOT, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == (0 if phase == "Promoted" else 1), res.stderr[-3000:]
    doc = last_json(res.stdout)
    assert doc["phase"] == phase, doc["reason"]
    assert doc["weights"] == weights  # read back from HAProxy after the run
    if breached is None:
        assert set(doc["verdicts"].values()) == {"pass"}
    else:
        assert doc["verdicts"][breached] == "fail", doc["verdicts"]
        assert breached in doc["reason"]
    assert doc["history"][-1]["to"] == phase
