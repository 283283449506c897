"""``rollout canary`` against a green that answers badly: never a pass, never a traceback.

The real CLI in a subprocess (as users run it) against two :class:`FaultyPeer` servers: a
healthy blue and a green with one fault. Broken images are a fail under the default output
check (exit 1); transport faults are errors the error-rate gate counts (fail, or inconclusive
while too few requests are in); nothing ever passes. Peak resident memory of the CLI is read
from the kernel's accounting of waited-for children.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fakes import PEAK_WRAPPER, split_peak
from faulty_peer import FaultyPeer

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "policies" / "prompts" / "tiny-64.yaml")
GIB = 1 << 30


def run_canary(blue: str, green: str, *extra: str) -> tuple[int, dict[str, Any], str, int]:
    """Exit code, JSON document, stderr and the peak RSS (bytes) of one ``rollout canary``."""
    cmd = [sys.executable, "-m", "rollout.cli", "canary", "--blue", blue, "--green", green,
           "--prompts", TINY, "--warmup", "0", "--concurrency", "2", "--timeout", "3",
           "--output", "json", *extra]
    p = subprocess.run([*PEAK_WRAPPER, *cmd], check=False, capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    stderr, peak = split_peak(p.stderr)
    doc = json.loads(p.stdout) if p.stdout.startswith("{") else {}
    return p.returncode, doc, stderr, peak


@pytest.mark.parametrize("fault", ["not_png", "truncated_png", "wrong_count", "bomb", "blank",
                                   "wrong_size"])
def test_broken_image_greens_fail_by_default(fault: str) -> None:
    with FaultyPeer() as blue, FaultyPeer(fault) as green:
        code, doc, err, peak = run_canary(blue.url, green.url, "--max-requests", "40")
    assert "Traceback" not in err, err
    assert code == 1 and doc["verdict"] == "fail", (fault, doc.get("reason"), err)
    output = next(g for g in doc["gates"] if g["type"] == "output")
    assert output["verdict"] == "fail" and "broken green images" in output["reason"]
    assert doc["output_check"]["mode"] == "valid"
    assert peak < GIB, f"peak RSS {peak >> 20} MiB"


def test_report_mode_is_the_opt_out_and_a_healthy_green_passes_validity() -> None:
    with FaultyPeer() as blue, FaultyPeer("blank") as green:
        code, doc, err, _ = run_canary(blue.url, green.url, "--max-requests", "20",
                                       "--image-check", "report")
        assert "Traceback" not in err and not any(g["type"] == "output" for g in doc["gates"])
        assert doc["verdict"] != "fail" and code != 1
        green.fault = "ok"
        code, doc, err, _ = run_canary(blue.url, green.url, "--max-requests", "20")
    output = next(g for g in doc["gates"] if g["type"] == "output")
    assert output["verdict"] == "pass" and doc["output_check"]["identical"] > 0
    assert code in (0, 3) and doc["verdict"] in ("pass", "inconclusive")


@pytest.mark.parametrize("fault", ["invalid_json", "html", "empty", "truncated_b64", "huge",
                                   "slowloris", "reset", "too_many", "unavailable", "redirect",
                                   "nan_json"])
def test_transport_faults_never_pass_never_crash(fault: str) -> None:
    with FaultyPeer() as blue, FaultyPeer(fault, drip_s=4) as green:
        code, doc, err, peak = run_canary(blue.url, green.url, "--max-requests", "12")
    assert "Traceback" not in err, err
    assert (code, doc["verdict"]) in ((1, "fail"), (3, "inconclusive")), (fault, doc, err)
    assert sum(doc["errors"]["green"].values()) == doc["requests"]["green"] > 0
    assert peak < GIB, f"peak RSS {peak >> 20} MiB"
