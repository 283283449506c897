"""The GPU validation harness (`bench/gpu_validation.py`) on the CPU: `--smoke` runs the same
code with the tiny model, so the harness cannot rot between the rare GPU runs.

It must start the servers, roll back a green on another execution path at admission, promote an
identical green through HAProxy, run a `rollout canary` table cell and keep every report and
record in its archive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from e2e_stack import ROOT


@pytest.mark.slow
def test_smoke_run_promotes_the_identical_green_and_rolls_back_the_other_path(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "bench/gpu_validation.py", "--smoke", "--out", str(out),
         "--rollouts", "generic,fast", "--budget", "800", "--table", "fast:512:2:30:60"],
        capture_output=True, text=True, timeout=500, cwd=ROOT, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads((out / "gpu_validation.json").read_text())
    rollouts = {r["case"]: r for r in doc["rollouts"]}
    assert rollouts["generic"]["phase"] == "RolledBack"
    assert rollouts["generic"]["verdicts"]["execution-path"] == "fail"
    assert rollouts["generic"]["canary_requests"] == {}  # caught before any canary request
    fast = rollouts["fast"]
    assert fast["phase"] == "Promoted" and fast["router"] == "haproxy"
    assert fast["weights"] == {"blue": 0, "green": 100}  # read back from HAProxy
    assert fast["canary_requests"]["green"] == fast["canary_requests"]["blue"] > 0
    [row] = doc["table"]
    assert row["arms"]["green"]["n"] == row["arms"]["blue"]["n"] == 30
    assert row["stopped_by"] == "budget" and row["drained_s"] >= 0
    assert "| fast | 512/25 | 2 | 30 |" in (out / "gpu_validation.md").read_text()
    with tarfile.open(out / "artifacts.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"report-fast.html", "report-generic.html",
            "records-fast-512-c2/requests.jsonl"} <= names
