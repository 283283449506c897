"""The canary runner against in-process fake servers (httpx.MockTransport): slices, timing
rules, error classes, records, stopping and the deadline."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gates.canary.adapters import A1111Txt2Img, OpenAIImages, get_adapter
from gates.canary.adapters.base import BadPayloadError
from gates.canary.evaluation import CanaryEvaluation, SliceOutcome
from gates.canary.loopback import LoopbackBehaviour, LoopbackServer, solid_png
from gates.canary.output_check import OutputCheckSpec
from gates.canary.prompts import Prompt
from gates.canary.records import ERROR_KINDS, RequestRecord
from gates.canary.runner import (
    CanaryConfig,
    CanaryProgress,
    CanaryResult,
    parse_server_timing,
    run_canary,
    run_canary_sync,
)
from gates.compare import compare
from gates.error_rate import ErrorRateGateSpec
from gates.gate import GateResult
from gates.latency import LatencyGateSpec
from gates.records import load_latencies
from gates.verdict import Verdict

PROMPTS = tuple(Prompt(id=f"p{i}", prompt=f"prompt {i}", seed=100 * i, width=64, height=64,
                       steps=4) for i in range(3))
# (arm, seed, calls so far on that arm) -> what to do: a delay, then a Response or exception.
Behaviour = Callable[[str, int, int], Awaitable[httpx.Response]]


def image_response(seed: int, value: int | None = None) -> httpx.Response:
    png = solid_png(16, seed if value is None else value)
    return httpx.Response(200, json={"data": [{"b64_json": base64.b64encode(png).decode()}]},
                          headers={"Server-Timing": "inference;dur=1.5"})


class Fake:
    """Both arms in one MockTransport; counts every request it receives."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.calls: Counter[str] = Counter()
        self.seeds: dict[str, list[int]] = {"blue": [], "green": []}

    async def handle(self, request: httpx.Request) -> httpx.Response:
        arm = request.url.host
        seed = json.loads(request.content)["seed"]
        self.calls[arm] += 1
        self.seeds[arm].append(seed)
        return await self.behaviour(arm, seed, self.calls[arm])

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


def config(**kw: Any) -> CanaryConfig:
    base: dict[str, Any] = {"blue_url": "http://blue", "green_url": "http://green",
                            "prompts": PROMPTS, "warmup_requests": 0, "deadline_s": 30.0,
                            "error_gate": ErrorRateGateSpec(max_rate=0.05)}
    return CanaryConfig(**{**base, **kw})


def run(fake: Fake, cfg: CanaryConfig, tmp: Path | None = None,
        **kw: Any) -> CanaryResult:
    return asyncio.run(run_canary(cfg, transport=fake.transport(), records_dir=tmp, **kw))


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def fast(arm: str, seed: int, n: int) -> httpx.Response:
    await asyncio.sleep(0.002)
    return image_response(seed)


def test_slices_share_prompt_and_seed_shuffle_arm_order_and_files_align(tmp_path: Path) -> None:
    fake = Fake(fast)
    r = run(fake, config(blue_per_green=2, max_requests=30, rate=300.0, warmup_requests=1),
            tmp_path)
    assert r.stopped_by == "budget" and r.slices["sent"] == 30
    assert r.requests == {"blue": 60, "green": 30}
    assert fake.calls == {"blue": 61, "green": 31}  # + one warm-up each, no retries
    every = rows(tmp_path / "requests.jsonl")
    warm = [x for x in every if x["excluded"] == "warmup"]
    assert len(warm) == 2 and all(x["slice"] is None and not x["ok"] for x in warm)
    measured_seeds = {x["seed"] for x in every if x["slice"] is not None}
    assert not measured_seeds & {x["seed"] for x in warm}
    by_slice: dict[int, list[dict[str, Any]]] = {}
    for x in every:
        if x["slice"] is not None:
            by_slice.setdefault(x["slice"], []).append(x)
    assert sorted(by_slice) == list(range(30))
    green_first = 0
    for n, group in by_slice.items():
        assert sorted(x["arm"] for x in group) == ["blue", "blue", "green"]
        p = PROMPTS[n % 3]
        assert {x["prompt_id"] for x in group} == {p.id}
        assert {x["seed"] for x in group} == {p.seed + n // 3}  # + cycle number
        assert sorted(x["order"] for x in group) == [0, 1, 2]
        assert len({x["image_hash"] for x in group}) == 1
        green_first += next(x["order"] for x in group if x["arm"] == "green") == 0
    assert 3 <= green_first <= 27  # shuffled, not always first or last
    g, b = load_latencies(tmp_path / "green.jsonl"), load_latencies(tmp_path / "blue.jsonl")
    assert (g.latencies.size, b.latencies.size, g.errors, b.errors) == (30, 60, 0, 0)
    np.testing.assert_allclose(g.latencies, r.latencies["green"], atol=1e-6)
    assert rows(tmp_path / "green.jsonl")[0]["server_timing"] == {"inference": 0.0015}
    assert r.output.identical == 30


def test_closed_loop_each_arm_keeps_its_own_pace_within_the_lead(tmp_path: Path) -> None:
    """Per-arm closed loops: a slow green does not hold blue's requests back (which would let
    the slower arm time both arms' arrivals), but blue runs at most 4 x concurrency slices
    ahead, and every slice still pairs the same prompt and seed on both arms."""
    in_flight: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    blue_started_at_first_green: list[int] = []

    async def slow_green(arm: str, seed: int, n: int) -> httpx.Response:
        in_flight[arm] += 1
        peak[arm] = max(peak[arm], in_flight[arm])
        await asyncio.sleep(0.04 if arm == "green" else 0.002)
        in_flight[arm] -= 1
        if arm == "green" and not blue_started_at_first_green:
            blue_started_at_first_green.append(fake.calls["blue"])
        return image_response(seed)

    fake = Fake(slow_green)
    r = run(fake, config(blue_per_green=2, max_requests=40, concurrency=2,
                         latency_gates=(), error_gate=ErrorRateGateSpec(max_rate=0.5)),
            tmp_path)
    assert r.verdict is Verdict.PASS and r.slices["judged"] >= 10
    assert peak == {"green": 2, "blue": 4}  # N green, K x N blue in flight, never more
    # Blue went on while green's first requests were in flight, but only up to the lead.
    assert 2 * 4 < blue_started_at_first_green[0] <= 2 * (4 * 2 + 2)
    every = [x for x in rows(tmp_path / "requests.jsonl") if x["excluded"] is None]
    judged = {x["slice"] for x in every}
    assert len(judged) == r.slices["judged"]
    for n in judged:
        group = [x for x in every if x["slice"] == n]
        assert sorted(x["arm"] for x in group) == ["blue", "blue", "green"]
        assert len({(x["prompt_id"], x["seed"]) for x in group}) == 1
        assert sorted(x["order"] for x in group) == [0, 1, 2]  # ranked by send time
        by_order = sorted(group, key=lambda x: x["order"])
        assert [x["start"] for x in by_order] == sorted(x["start"] for x in group)


async def troubled_green(arm: str, seed: int, n: int) -> httpx.Response:
    """Green fails in every way, by seed (prompt p1 -> seeds 100, 101, ...)."""
    await asyncio.sleep(0.001)
    if arm == "green" and seed == 100:
        return httpx.Response(503, text="overloaded")
    if arm == "green" and seed == 101:
        return httpx.Response(422, text="bad steps")
    if arm == "green" and seed == 102:
        return httpx.Response(200, json={"data": [{"b64_json": "%%%"}]})
    if arm == "green" and seed == 103:
        raise httpx.ConnectError("connection refused")
    if arm == "green" and seed == 104:
        await asyncio.sleep(5)
    if arm == "blue" and seed == 200:
        return httpx.Response(500, text="blue broke")
    return image_response(seed)


def test_errors_are_classified_counted_never_retried_and_keep_the_files_aligned(
        tmp_path: Path) -> None:
    fake = Fake(troubled_green)
    r = run(fake, config(max_requests=18, concurrency=6, timeout_s=0.3,
                         error_gate=ErrorRateGateSpec(max_rate=0.5)), tmp_path)
    assert r.slices["sent"] == 18 and fake.calls == {"blue": 18, "green": 18}
    assert r.errors["green"] == {"timeout": 1, "connect": 1, "http_4xx": 1, "http_5xx": 1,
                                 "bad_payload": 1}
    assert r.errors["blue"]["http_5xx"] == 1
    # a timeout still judges its slice (censored); the other four and blue's 500 leave theirs out
    assert (r.slices["judged"], r.slices["excluded"]) == (13, 5)
    green = rows(tmp_path / "green.jsonl")
    kinds = Counter(x["error"] for x in green)
    assert kinds == Counter({None: 12, **dict.fromkeys(ERROR_KINDS, 1)})
    timeout = next(x for x in green if x["error"] == "timeout")
    assert timeout["ok"] and timeout["censored"] and timeout["latency_s"] >= 0.3
    assert max(x["latency_s"] for x in green if x["error"] is None) < 0.3
    assert all(not x["ok"] and x["detail"] for x in green
               if x["error"] not in (None, "timeout"))
    g, b = load_latencies(tmp_path / "green.jsonl"), load_latencies(tmp_path / "blue.jsonl")
    assert g.latencies.size == b.latencies.size == 13
    assert (g.errors, b.errors) == (4, 1)
    left_out = [x for x in rows(tmp_path / "requests.jsonl") if x["excluded"] == "slice-error"]
    assert len(left_out) == 5  # the partners of the five failed requests
    err = next(g for g in r.gates if g.kind == "error-rate")
    assert err.evidence["errors"] == 5 and err.evidence["requests"] == 18


async def slower_green(arm: str, seed: int, n: int) -> httpx.Response:
    await asyncio.sleep(0.003 * (4 if arm == "green" else 1))
    return image_response(seed)


def test_stops_once_decided_and_rollout_compare_agrees(tmp_path: Path) -> None:
    fake = Fake(slower_green)
    seen: list[CanaryProgress] = []
    r = run(fake, config(max_requests=300, concurrency=4), tmp_path, on_progress=seen.append)
    assert r.verdict is Verdict.FAIL and r.stopped_by == "decided"
    latency = next(g for g in r.gates if g.kind == "latency")
    assert latency.verdict is Verdict.FAIL
    assert r.slices["sent"] < 40
    assert [p.slices for p in seen] == sorted({p.slices for p in seen})  # throttled, in order
    assert seen[-1].slices == r.slices["judged"] and seen[-1].judge.startswith("latency fail")
    assert seen[-1].p95["green"] > seen[-1].p95["blue"]
    every = rows(tmp_path / "requests.jsonl")
    for arm in ("blue", "green"):  # one record per request sent: no retries, none lost
        assert len([x for x in every if x["arm"] == arm]) == fake.calls[arm]
    judged = {x["slice"] for x in every if x["excluded"] is None}
    cancelled = {x["slice"] for x in every if x["excluded"] == "cancelled"}
    assert len(judged) == r.slices["judged"] and not judged & cancelled
    assert len(judged | cancelled) == r.slices["sent"]
    g, b = load_latencies(tmp_path / "green.jsonl"), load_latencies(tmp_path / "blue.jsonl")
    c = compare(b.latencies, g.latencies, method="sequential")
    assert c.verdict is Verdict.FAIL and c.decided_at == latency.evidence["decided_at"]


async def stalled_green(arm: str, seed: int, n: int) -> httpx.Response:
    if arm == "green":
        await asyncio.sleep(3600)
    await asyncio.sleep(0.001)
    return image_response(seed)


def test_a_never_answering_green_times_out_fails_and_ends_on_time(tmp_path: Path) -> None:
    fake = Fake(stalled_green)
    t0 = time.monotonic()
    r = run(fake, config(max_requests=100, concurrency=8, timeout_s=0.25, deadline_s=10),
            tmp_path)
    assert time.monotonic() - t0 < 3
    assert r.verdict is Verdict.FAIL and r.stopped_by == "decided"
    assert r.errors["green"]["timeout"] >= 3
    verdicts = {g.kind: g.verdict for g in r.gates}
    assert verdicts["error-rate"] is Verdict.FAIL  # after 3 timeouts, before latency's guard
    assert verdicts["latency"] is Verdict.INCONCLUSIVE
    green = rows(tmp_path / "green.jsonl")
    assert all(x["error"] == "timeout" and x["censored"] for x in green)


def test_the_deadline_cancels_everything_in_flight(tmp_path: Path) -> None:
    fake = Fake(stalled_green)
    t0 = time.monotonic()
    r = run(fake, config(max_requests=100, concurrency=4, timeout_s=60, deadline_s=0.5,
                         warmup_requests=1), tmp_path)
    assert 0.5 <= time.monotonic() - t0 < 2
    assert r.stopped_by == "deadline" and r.verdict is Verdict.NODATA
    every = rows(tmp_path / "requests.jsonl")
    assert [x["excluded"] for x in every if x["arm"] == "green"] == ["cancelled"]  # warm-up
    assert r.slices["sent"] == 0


def test_should_stop_cancels_the_run_within_one_slice_against_slow_servers(
        tmp_path: Path) -> None:
    """Two loopback servers answering in 0.3 s; the stop is asked for after the third slice:
    the run ends then (the fourth slice, in flight, is cancelled), never spends its budget."""
    seen: list[CanaryProgress] = []
    asked: list[float] = []

    def should_stop() -> str | None:
        asked.append(time.monotonic())
        return "abort requested by user" if len(seen) >= 3 else None

    slow = LoopbackBehaviour(service_s=0.3)
    with LoopbackServer(slow) as blue, LoopbackServer(slow) as green:
        t0 = time.monotonic()
        r = run_canary_sync(
            config(blue_url=blue.url, green_url=green.url, concurrency=1, max_requests=100,
                   deadline_s=60.0), records_dir=tmp_path, on_progress=seen.append,
            should_stop=should_stop)
        took = time.monotonic() - t0
    assert r.stopped_by == "cancelled" and r.verdict is not Verdict.PASS
    assert r.reason.startswith("cancelled (abort requested by user)")
    assert r.slices["judged"] == 3 and r.slices["cancelled"] <= 1
    assert 3 * 0.3 <= took < 4 * 0.3 + 0.5  # three slices, then at most one slice's time
    assert asked[-1] - asked[0] < took  # asked while running, not only at the end
    every = rows(tmp_path / "requests.jsonl")
    assert {x["slice"] for x in every if x["excluded"] is None} == {0, 1, 2}
    assert all(x["excluded"] == "cancelled" for x in every if x["slice"] not in (0, 1, 2))
    assert r.to_dict()["stopped_by"] == "cancelled"


@pytest.mark.parametrize("rate", [None, 20.0], ids=["closed-loop", "open-loop"])
def test_should_stop_is_polled_while_requests_hang_and_cancels_them(
        tmp_path: Path, rate: float | None) -> None:
    """Green never answers, so no slice finishes: the poll (every 0.25 s) still stops the run
    and every request in flight is recorded as cancelled."""
    t0 = time.monotonic()

    def should_stop() -> str | None:
        return "rollback requested" if time.monotonic() - t0 > 0.4 else None

    r = run(Fake(stalled_green), config(max_requests=50, concurrency=2, rate=rate,
                                        timeout_s=60, deadline_s=30, warmup_requests=1),
            tmp_path, should_stop=should_stop)
    assert 0.4 <= time.monotonic() - t0 < 0.4 + 0.25 + 0.5
    assert r.stopped_by == "cancelled" and r.slices["judged"] == 0
    green = [x for x in rows(tmp_path / "requests.jsonl") if x["arm"] == "green"]
    assert green and all(x["excluded"] == "cancelled" for x in green)


def test_a_stop_asked_before_the_start_sends_nothing() -> None:
    fake = Fake(fast)
    r = run(fake, config(max_requests=10, warmup_requests=1), should_stop=lambda: "abort")
    assert r.stopped_by == "cancelled" and r.slices["sent"] == 0 and not fake.calls


def test_without_a_stop_asked_the_run_is_unchanged() -> None:
    r = run(Fake(fast), config(max_requests=12, latency_gates=(),
                               error_gate=ErrorRateGateSpec(max_rate=0.5, min_requests=5)),
            should_stop=lambda: None)
    assert r.stopped_by in ("decided", "budget") and r.slices["judged"] >= 5


def test_a_body_over_the_cap_is_a_bad_payload_with_the_cap_in_its_detail(
        tmp_path: Path) -> None:
    async def big_green(arm: str, seed: int, n: int) -> httpx.Response:
        await asyncio.sleep(0.001)
        if arm == "green":
            return httpx.Response(200, content=b"x" * 5000)
        return image_response(seed)

    r = run(Fake(big_green), config(max_requests=3, concurrency=1, max_body_bytes=4096,
                                    error_gate=ErrorRateGateSpec(max_rate=0.5)), tmp_path)
    assert {k for k, n in r.errors["green"].items() if n} == {"bad_payload"}
    green = rows(tmp_path / "green.jsonl")
    assert green and all(x["error"] == "bad_payload" and "4 KiB cap" in x["detail"]
                         for x in green)


def test_open_loop_times_from_the_due_moment_no_coordinated_omission(tmp_path: Path) -> None:
    def one_at_a_time() -> Fake:
        lock = asyncio.Lock()  # a server that serves one request at a time, 20 ms each

        async def serve(arm: str, seed: int, n: int) -> httpx.Response:
            async with lock:
                await asyncio.sleep(0.02)
            return image_response(seed)

        return Fake(serve)

    r = run(one_at_a_time(), config(max_requests=60, rate=40.0, seed=3), tmp_path)
    assert r.slices["sent"] == 60
    green = sorted(rows(tmp_path / "green.jsonl"), key=lambda x: x["slice"])
    gaps = np.diff([x["start"] for x in green])
    # due times of Poisson arrivals (mean gap 1/40 s, as variable as their mean), not the
    # moments a busy client got round to sending
    assert 0.6 / 40 < gaps.mean() < 1.5 / 40 and 0.5 < gaps.std() / gaps.mean() < 1.5
    lat = np.array([x["latency_s"] for x in green])
    # offered 80 requests/s to a 50/s server: the queue, and so the latency, keeps growing
    assert lat[-5:].mean() > lat[:5].mean() + 0.2
    again = run(one_at_a_time(), config(max_requests=60, rate=40.0, seed=3), tmp_path)
    assert again.slices["sent"] == 60
    gaps_again = np.diff(sorted(x["start"] for x in rows(tmp_path / "green.jsonl")))
    np.testing.assert_allclose(gaps_again, gaps, atol=3e-3)  # the seed fixes the arrivals


def test_output_check_equal_mode_fails_a_green_drawing_other_images() -> None:
    async def other_images(arm: str, seed: int, n: int) -> httpx.Response:
        await asyncio.sleep(0.001)
        return image_response(seed, value=seed + (1 if arm == "green" else 0))

    r = run(Fake(other_images), config(max_requests=50, concurrency=2,
                                       output_check=OutputCheckSpec(mode="equal")))
    out = next(g for g in r.gates if g.kind == "output")
    assert r.verdict is Verdict.FAIL and out.verdict is Verdict.FAIL
    assert r.stopped_by == "decided" and r.slices["sent"] <= 3


def test_server_timing_header() -> None:
    assert parse_server_timing('queue;dur=12.5, inference;desc="x";dur=800, total') == {
        "queue": 0.0125, "inference": 0.8}
    assert parse_server_timing("cache;desc=hit") is None
    assert parse_server_timing(None) is None


def test_adapters_build_their_apis_requests_and_reject_bad_payloads() -> None:
    p = Prompt(id="a", prompt="cat", negative_prompt="blurry", seed=1, steps=4, width=64,
               height=32, guidance=5.0, batch=2)
    o = OpenAIImages().request(p, 7)
    assert o.path == "/v1/images/generations"
    assert o.body == {"prompt": "cat", "n": 2, "size": "64x32", "response_format": "b64_json",
                      "seed": 7, "steps": 4, "guidance_scale": 5.0, "negative_prompt": "blurry"}
    a = A1111Txt2Img().request(p, 7)
    assert a.path == "/sdapi/v1/txt2img"
    assert a.body == {"prompt": "cat", "negative_prompt": "blurry", "seed": 7, "steps": 4,
                      "cfg_scale": 5.0, "width": 64, "height": 32, "batch_size": 2}
    png = solid_png(8, 3)
    b64 = base64.b64encode(png).decode()
    assert A1111Txt2Img().images(json.dumps(
        {"images": [f"data:image/png;base64,{b64}"]}).encode()) == [png]
    for body in (b"not json", b'{"data": []}', b'{"data": [{"url": "http://x"}]}',
                 b'{"data": [{"b64_json": ""}]}'):
        with pytest.raises(BadPayloadError):
            get_adapter("openai").images(body)
    with pytest.raises(ValueError, match="api must be one of"):
        get_adapter("kserve")


def test_config_rejects_bad_settings() -> None:
    for kw in ({"blue_url": "blue:8000"}, {"prompts": ()}, {"concurrency": 0},
               {"rate": 0.0}, {"max_requests": 0}, {"timeout_s": 0.0}, {"api": "grpc"},
               {"max_body_bytes": 0}):
        with pytest.raises(ValueError):
            config(**kw)


def test_other_encodings_of_the_same_pixels_are_decoded_and_pass_the_equality_check(
        tmp_path: Path) -> None:
    def encoded(seed: int, level: int) -> httpx.Response:
        raw = (b"\x00" + bytes([seed % 256]) * 16) * 16
        head = solid_png(16, seed)[:33]  # signature + IHDR of the same image
        idat = zlib.compress(raw, level)
        chunk = (struct.pack(">I", len(idat)) + b"IDAT" + idat
                 + struct.pack(">I", zlib.crc32(b"IDAT" + idat)))
        png = head + chunk + solid_png(16, seed)[-12:]
        return httpx.Response(200, json={"data": [{"b64_json": base64.b64encode(png).decode()}]})

    async def other_encoder(arm: str, seed: int, n: int) -> httpx.Response:
        await asyncio.sleep(0.001)
        return encoded(seed, 1 if arm == "green" else 9)

    r = run(Fake(other_encoder), config(max_requests=12, concurrency=2,
                                        output_check=OutputCheckSpec(mode="equal")), tmp_path)
    assert next(g for g in r.gates if g.kind == "output").verdict is Verdict.PASS
    assert r.output.identical == r.output.compared == 12
    green = rows(tmp_path / "green.jsonl")
    blue = {x["slice"]: x for x in rows(tmp_path / "blue.jsonl")}
    for x in green:  # other bytes, so decoded: same signature recorded on both arms
        assert x["image_hash"] != blue[x["slice"]]["image_hash"]
        assert x["image_sig"] and x["image_sig"] == blue[x["slice"]]["image_sig"]


def test_public_names_exist() -> None:
    import importlib

    for name in ("gates.canary", "gates.canary.adapters", "gates.canary.evaluation",
                 "gates.canary.output_check", "gates.canary.prompts", "gates.canary.records",
                 "gates.canary.runner", "gates.canary.config", "gates.canary.exchange",
                 "gates.canary.loops", "gates.canary.outcome", "gates.canary.loopback",
                 "gates.error_rate"):
        module = importlib.import_module(name)
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, (name, missing)


def test_the_canary_exports_the_one_gate_result_and_combiner() -> None:
    import gates.canary
    import gates.gate

    assert gates.canary.GateResult is gates.gate.GateResult
    assert gates.canary.combine is gates.gate.combine


# --- maxRatio x (1 + tolerance): one limit under every canary method ------------------------


def _judge(method: str, *, factor: float, tolerance: float, slices: int = 400) -> GateResult:
    """A latency gate (maxRatio 2.0) judging a green exactly ``factor`` times its blue."""
    gate = LatencyGateSpec(name="p95", method=method, max_ratio=2.0,  # type: ignore[arg-type]
                           tolerance=tolerance)
    ev = CanaryEvaluation(latency_gates=(gate,))
    blue = np.random.default_rng(7).lognormal(0.0, 0.05, slices)  # tight: fixed tests resolve it
    for i, b in enumerate(blue):
        green = RequestRecord(slice=i, arm="green", replica=0, order=0, prompt_id="p", seed=i,
                              start=0.0, latency_s=float(b) * factor)
        partner = RequestRecord(slice=i, arm="blue", replica=0, order=1, prompt_id="p", seed=i,
                                start=0.0, latency_s=float(b))
        ev.consume(SliceOutcome(i, green, (partner,)))
        if ev.finished:
            break
    (result,) = [r for r in ev.gate_results() if r.name == "p95"]
    assert result.evidence["limit"] == pytest.approx(2.0 * (1 + tolerance))
    return result


@pytest.mark.parametrize("method", ["sequential", "threshold", "bootstrap", "mannwhitney"])
def test_a_gate_tolerance_of_15_percent_on_max_ratio_2_judges_against_2_3(method: str) -> None:
    """Green 2.2x blue: inside maxRatio 2.0 x 1.15 = 2.3, outside 2.0 (tolerance 0); 2.4x is
    outside 2.3. The sequential judge streams (green / 2.3 is never the slower of its slice, so
    it promotes; green / 2.0 always is, so the fast-fail guard rolls back)."""
    assert _judge(method, factor=2.2, tolerance=0.15).verdict is Verdict.PASS
    assert _judge(method, factor=2.4, tolerance=0.15).verdict is Verdict.FAIL
    assert _judge(method, factor=2.2, tolerance=0.0).verdict is Verdict.FAIL


@pytest.mark.parametrize("method", ["sequential", "threshold", "bootstrap", "mannwhitney"])
def test_zero_tolerance_judges_against_exactly_max_ratio(method: str) -> None:
    assert _judge(method, factor=1.9, tolerance=0.0).verdict is Verdict.PASS
    assert _judge(method, factor=2.1, tolerance=0.0).verdict is Verdict.FAIL
