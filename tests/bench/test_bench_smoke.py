"""The benches still run: each one in a tiny mode, its tables checked for shape.

Why: a bench script is run by hand once in a while, so nothing else notices when an API it
uses moves. These runs are seconds long and assert the shape of what the bench writes (rows per
level, columns per row, the goal lines), never a timing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, out: Path, *args: str) -> list[list[str]]:
    """Run ``bench/<script>`` writing to ``out``; the rows of every Markdown table in it."""
    subprocess.run([sys.executable, str(ROOT / "bench" / script), "--out", str(out), *args],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in out.read_text().splitlines()
            if line.startswith("|") and not line.startswith("|--")]


@pytest.mark.skipif(shutil.which("hey") is None or shutil.which("wrk") is None,
                    reason="hey and wrk are the floor this bench compares against")
def test_canary_overhead_tiny_run_has_every_client_per_level(tmp_path: Path) -> None:
    out = tmp_path / "overhead.md"
    rows = _run("canary_overhead.py", out, "--service-ms", "5", "--seconds", "0.2",
                "--levels", "1", "2")
    clients = [r for r in rows if len(r) == 9]
    assert clients[0][0] == "client"
    assert [(r[0], r[1]) for r in clients[1:]] == [
        ("bare httpx, 1 request (floor)", "-"),
        *((c, lvl) for lvl in ("1", "2")
          for c in ("canary, closed", "canary, open", "hey", "wrk"))]
    for r in clients[1:]:
        assert int(r[2]) > 0  # requests measured
        float(r[4])  # every latency cell is a number
    for r in clients[2:]:
        if r[0].startswith("canary"):  # the whole budget ran: no gate stopped it early
            assert int(r[2]) == 2 * max(40, int(0.2 / 0.005 * int(r[1])))
    ratios = [r for r in rows if len(r) == 8]
    assert [r[:2] for r in ratios[1:]] == [["1", "2"], ["2", "4"]]
    text = out.read_text()
    assert text.count("- Goal: canary P99 added under 2 ms at concurrency 1") == 2
    assert "within 1.5x of hey's at concurrency 32" not in text  # level 32 was not run


def test_controller_scaling_tiny_run_has_a_row_per_level(tmp_path: Path) -> None:
    out = tmp_path / "scaling.md"
    rows = _run("controller_scaling.py", out, "--rollouts", "1", "2", "--requests", "100",
                "300", "--canary-requests", "8")
    controller = [r for r in rows if len(r) == 10]
    assert [r[0] for r in controller[1:]] == ["1", "2"]
    for r in controller[1:]:
        assert r[1].startswith(r[0] + " (")  # every rollout finished
        assert int(r[6]) >= 3 * int(r[0])  # at least admit, shift, analyse per rollout
    report = [r for r in rows if len(r) == 5]
    assert [r[0] for r in report[1:]] == ["100", "300"]
    assert all(float(r[4]) > 0 for r in report[1:])  # a non-empty HTML report
