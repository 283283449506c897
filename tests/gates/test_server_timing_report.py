"""Server-Timing end to end on the canary side: header -> records -> report, over real HTTP.

The servers here are real HTTP servers in threads (not the SD server, which
tests/sd_server/test_server_timing_pipeline.py covers), so the headers can be anything,
malformed ones included.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fakes import serving

from gates.canary.exchange import parse_server_timing
from gates.canary.loopback import solid_png
from gates.canary.prompts import Prompt
from gates.canary.runner import CanaryConfig, run_canary_sync
from gates.error_rate import ErrorRateGateSpec
from rollout.report import CanaryRun, ReportData, load_records, render_report
from rollout.report.series import OVERHEAD_TOLERANCE_S, server_total, timing_split

PROMPTS = tuple(Prompt(id=f"p{i}", prompt=f"prompt {i}", seed=100 * i, width=16, height=16,
                       steps=1) for i in range(2))

#: (header sent, what the record must hold): absent and malformed headers are recorded as
#: absent, never as an error.
HEADERS: tuple[tuple[str | None, dict[str, float] | None], ...] = (
    ("queue;dur=2.5, inference;dur=40, encode;dur=1.5, total;dur=45",
     {"queue": 0.0025, "inference": 0.04, "encode": 0.0015, "total": 0.045}),
    (None, None),
    ("", None),
    ("garbage without any structure", None),
    ("inference;dur=abc, queue;dur=-3, encode;dur=nan, total;dur=1e999", None),
    ('inference;desc="a, b";dur=7, cache;desc=hit', {"inference": 0.007}),
    (";dur=5,,;;,=,total;dur", None),
)
# Header values arrive as latin-1 text: a name that is no token is skipped, not an error.
HEADERS += (("t\u00e9st;dur=1, queue;dur=1_0, total;dur=\"3\";dur=4", {"total": 0.003}),)


def handler(choose: Callable[[int], tuple[str | None, float]]) -> type[BaseHTTPRequestHandler]:
    """An OpenAI-images server: one grey PNG per request; ``choose(seed)`` gives the
    Server-Timing header to send (or None) and how long to take first."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            seed = int(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["seed"])
            header, delay = choose(seed)
            if delay:
                time.sleep(delay)  # a test server's stand-in for work it leaves out of its timing
            png = base64.b64encode(solid_png(8, seed)).decode()
            body = json.dumps({"data": [{"b64_json": png}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if header is not None:
                self.send_header("Server-Timing", header)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def canary(blue: ThreadingHTTPServer, green: ThreadingHTTPServer, records: Path,
           **kw: Any) -> None:
    base: dict[str, Any] = {"prompts": PROMPTS, "warmup_requests": 0, "max_requests": 24,
                            "concurrency": 4, "deadline_s": 60.0,
                            "error_gate": ErrorRateGateSpec(max_rate=0.05)}
    cfg = CanaryConfig(blue_url=f"http://127.0.0.1:{blue.server_address[1]}",
                       green_url=f"http://127.0.0.1:{green.server_address[1]}", **{**base, **kw})
    run_canary_sync(cfg, records_dir=records)


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("header", "expected"), HEADERS)
def test_header_parsed_or_absent_never_an_error(header: str | None,
                                                expected: dict[str, float] | None) -> None:
    got = parse_server_timing(header)
    assert got == (None if expected is None else pytest.approx(expected))


def test_records_carry_the_header_malformed_or_absent_ones_as_absent(tmp_path: Path) -> None:
    def choose(seed: int) -> tuple[str | None, float]:
        return HEADERS[seed % len(HEADERS)][0], 0.0

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), handler(choose))) as blue, \
            serving(ThreadingHTTPServer(("127.0.0.1", 0), handler(choose))) as green:
        canary(blue, green, tmp_path, prompts=tuple(
            Prompt(id=f"p{i}", prompt="x", seed=i, width=16, height=16, steps=1)
            for i in range(len(HEADERS))), max_requests=3 * len(HEADERS))
    every = rows(tmp_path / "requests.jsonl")
    assert len(every) == 2 * 3 * len(HEADERS)
    assert all(r["ok"] and r["error"] is None for r in every)  # a bad header is no failure
    seen = set()
    for r in every:
        expected = HEADERS[r["seed"] % len(HEADERS)][1]
        assert r["server_timing"] == (None if expected is None else pytest.approx(expected))
        seen.add(r["seed"] % len(HEADERS))
    assert seen == set(range(len(HEADERS)))


def test_report_flags_an_arm_whose_overhead_lies_outside_its_server(tmp_path: Path) -> None:
    """Green takes 150 ms but says its total was 0.1 ms: its overhead exceeds blue's by far
    more than the tolerance, whatever the machine's load adds to both."""
    delay = 0.15
    assert delay > 10 * OVERHEAD_TOLERANCE_S
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), handler(
            lambda seed: ("queue;dur=0.05, inference;dur=0.05, total;dur=0.1", 0.0)))) as blue, \
            serving(ThreadingHTTPServer(("127.0.0.1", 0), handler(
                lambda seed: ("queue;dur=0.05, inference;dur=0.05, total;dur=0.1", delay)))) \
            as green:
        canary(blue, green, tmp_path)
    data = load_records(tmp_path)
    blue_split = timing_split(data.canaries[0].rows, "blue")
    green_split = timing_split(data.canaries[0].rows, "green")
    assert blue_split is not None and green_split is not None
    assert green_split.server == pytest.approx((1e-4, 1e-4))
    assert green_split.overhead[0] >= delay - 1e-4
    assert green_split.timed == green_split.judged > 0
    page = render_report(data)
    assert "Client vs server latency" in page
    assert 'data-flag="client-overhead"' in page
    assert "green's median is" in page and "above blue's" in page


def run_of(rows_: list[dict[str, Any]]) -> ReportData:
    run = CanaryRun(label="records", path=None, rows=tuple(rows_), gates=())
    return ReportData(name="t", source="test", phase=None, reason="", canaries=(run,))


def row(arm: str, latency: float, timing: dict[str, float] | None, ok: bool = True
        ) -> dict[str, Any]:
    return {"arm": arm, "slice": 0, "latency_s": latency, "ok": ok, "server_timing": timing,
            "error": None, "excluded": None}


def test_split_quantiles_and_agreement_from_known_rows() -> None:
    rows_ = [row("blue", 0.100 + i / 1000, {"queue": 0.01, "inference": 0.08}) for i in range(11)]
    rows_ += [row("green", 0.200 + i / 1000, {"queue": 0.05, "total": 0.195}) for i in range(11)]
    rows_ += [row("green", 9.0, {"total": 1.0}, ok=False),  # not judged: left out
              row("green", 0.3, None)]  # judged, no timing
    blue, green = timing_split(rows_, "blue"), timing_split(rows_, "green")
    assert blue is not None and green is not None
    assert (blue.timed, blue.judged, green.timed, green.judged) == (11, 11, 11, 12)
    assert blue.client[0] == pytest.approx(0.105) and blue.server == pytest.approx((0.09, 0.09))
    assert blue.overhead[0] == pytest.approx(0.015)
    assert green.server[0] == pytest.approx(0.195)  # "total" wins over the sum of parts
    assert green.overhead[0] == pytest.approx(0.010)
    page = render_report(run_of(rows_))
    assert 'data-flag="client-overhead"' not in page
    assert "Client overhead agrees between the arms (medians 5.0 ms apart" in page
    assert ">11 / 12<" in page


def test_one_arm_without_server_timing_is_said_and_none_at_all_too() -> None:
    half = [row("blue", 0.1, {"total": 0.09}), row("green", 0.1, None)]
    assert 'data-flag="server-timing-missing"' in render_report(run_of(half))
    none = [row("blue", 0.1, None), row("green", 0.1, {"total": -1.0, "x": math.inf})]
    page = render_report(run_of(none))
    assert "No answer carried a <code>Server-Timing</code> header" in page
    assert server_total({"total": math.nan, "queue": 0.5, "flag": True}) == 0.5
