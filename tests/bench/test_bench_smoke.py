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
    clients = [r for r in rows if len(r) == 9 and not r[0].isdigit()
               and r[0] != "slices in flight"]
    assert clients[0][0] == "client"
    assert [(r[0], r[1]) for r in clients[1:]] == [
        ("bare httpx, 1 request (floor)", "-"),
        *((c, lvl) for lvl in ("1", "2")
          for c in ("canary, closed, before (httpx transport)", "canary, closed",
                    "canary, open", "hey", "wrk"))]
    for r in clients[1:]:
        assert int(r[2]) > 0  # requests measured
        float(r[4])  # every latency cell is a number
    for r in clients[2:]:
        if r[0].startswith("canary"):  # the whole budget ran: no gate stopped it early
            assert int(r[2]) == 2 * max(40, int(0.2 / 0.005 * int(r[1])))
    ratios = [r for r in rows if len(r) == 9 and r[0].isdigit()]
    assert [r[:2] for r in ratios] == [["1", "2"], ["2", "4"]]
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


def test_sd_server_pipeline_tiny_run_compares_inline_with_the_pool(tmp_path: Path) -> None:
    """The CPU path CI runs; the GPU run (``--device cuda``) adds one column and one line,
    checked below from the same report function."""
    out = tmp_path / "pipeline.md"
    rows = _run("sd_server_pipeline.py", out, "--seconds", "1.5", "--rounds", "1", "--warmup",
                "0.5", "--concurrency", "2", "--size", "64", "--steps", "1")
    table = [r for r in rows if len(r) == 11]
    assert [r[0] for r in table[1:]] == ["inline (--encode-workers 0)", "pool (--encode-workers 2)"]
    for r in table[1:]:
        assert int(r[3]) > 0 and r[4] == "0"  # images answered, no errors
        assert r[10] == "-"  # no GPU utilization on the CPU
    assert "No GPU here" in out.read_text()


def test_sd_server_pipeline_report_names_gpu_utilization_when_sampled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import argparse

    import sd_server_pipeline as bench

    def rnd(util: float) -> bench.Round:
        r = bench.Round(images=30, seconds=10.0, latencies=[0.5] * 30, gpu_util_pct=util)
        r.phases = {"queue": [0.01], "inference": [0.4], "encode": [0.05]}
        return r

    args = argparse.Namespace(seconds=10.0, rounds=1, concurrency=16, size=512, steps=25,
                              encode_workers=2, device="cuda", model="sd15-arch", max_batch=8,
                              load_before=0.0)
    text = bench.report({"inline": [rnd(63.0)], "pool": [rnd(91.0)]}, args)
    assert "| inline | 1 | 3.00 |" in text and text.count("| 63 |") == 1
    assert "GPU utilization (NVML, mean of round means): inline 63%, pool 91%" in text
    assert "No GPU here" not in text
