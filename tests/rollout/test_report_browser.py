"""Acceptance: rollout reports rendered by headless Chromium (Debian's ``chromium``) show the
verdict and the plots. Screenshots are kept under ``test-artifacts/``.

Chromium runs with networking features off and the report must not need them: it is one
self-contained file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_report_rollout import SLOW, app, loopback_rollout
from typer.testing import CliRunner

from rollout.report import load_rollout, write_report

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PIL = pytest.importorskip("PIL.Image", reason="Pillow comes with matplotlib (report extra)")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(apt-get install -y chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--hide-scrollbars", "--window-size=1400,4000"]
RED_VERDICT = (0xB4, 0x23, 0x18)  # #verdict.bad background


def chromium(page: Path, *args: str) -> str:
    assert CHROMIUM is not None
    res = subprocess.run([CHROMIUM, *FLAGS, *args, page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=90, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def check_rendered(page: Path, screenshot: Path, gate: str) -> None:
    """The browser's DOM holds the verdict and the SVG plots; the screenshot shows them."""
    dom = chromium(page, "--dump-dom")
    verdict = re.search(r'<div id="verdict" class="bad"><div class="phase">(\w+)</div>', dom)
    assert verdict is not None and verdict.group(1) == "RolledBack"
    plots = re.findall(r'data-plot="([^"]+)"><svg', dom)
    assert {"timeline", "latency distributions", f"judge {gate}"} <= set(plots)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    chromium(page, f"--screenshot={screenshot}")
    img = PIL.open(screenshot).convert("RGB")
    assert img.size == (1400, 4000)
    top = img.crop((0, 0, 1400, 400))
    colors = {c for _, c in top.getcolors(maxcolors=1 << 20) or []}
    assert RED_VERDICT in colors  # the verdict banner is on the first screen
    whole = img.getcolors(maxcolors=1 << 22) or []
    assert len(whole) > 500  # text, plot lines, anti-aliasing: far from a blank page
    # Both arms' plot lines are drawn (matplotlib's anti-aliasing keeps the pure colour in
    # line centres).
    assert {(0x1F, 0x6F, 0xB4), (0x2A, 0x9D, 0x3A)} <= {c for _, c in whole}


def test_loopback_rollout_report_in_chromium(tmp_path: Path) -> None:
    with loopback_rollout(tmp_path, SLOW) as r:
        assert r.final.phase.value == "RolledBack"
    page = write_report(load_rollout("shop", r.state), tmp_path / "report.html")
    check_rendered(page, ARTIFACTS / "report-loopback.png", "p95")


def _demo_stack_missing() -> str | None:
    exe = Path(sys.executable).with_name("sd-server")
    for what, found in (("sd-server", exe.exists() or shutil.which("sd-server")),
                        ("haproxy", shutil.which("haproxy")),
                        ("prometheus", shutil.which("prometheus"))):
        if not found:
            return what
    return None


@pytest.mark.skipif(_demo_stack_missing() is not None,
                    reason=f"rollout demo needs {_demo_stack_missing()} (make install, "
                    f"make system-deps)")
def test_demo_report_in_chromium(tmp_path: Path) -> None:
    """The real thing once: ``rollout demo --scenario tail-latency`` (two tiny SD servers,
    HAProxy, Prometheus), then ``rollout report demo``, in the browser."""
    rollout = str(Path(sys.executable).with_name("rollout"))
    root = tmp_path / "demo"
    t0 = time.monotonic()
    res = subprocess.run([rollout, "demo", "--scenario", "tail-latency", "--root", str(root)],
                         capture_output=True, text=True, timeout=150, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 1, res.stderr[-3000:]  # rolled back
    assert time.monotonic() - t0 < 90
    out = tmp_path / "demo.html"
    res = CliRunner().invoke(app, ["report", "demo", "--state-dir", str(root / "state"),
                                   "-o", str(out)])
    assert res.exit_code == 0 and res.stdout.strip() == str(out), res.output
    html = out.read_text()
    assert "✓ The replay reproduces the recorded judge" in html
    check_rendered(out, ARTIFACTS / "report-demo.png", "p95")
