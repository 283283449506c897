"""A colour is a fleet: the canary spreads its slices over every instance of each arm and judges
each green instance against blue's pool, naming the one that is slower or broken.

Real HTTP: loopback image servers (a known service time, or 500s) in threads, one per instance.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from fleet import loopback_fleet

from gates.canary.fleet import Instance
from gates.canary.loopback import LoopbackBehaviour, LoopbackServer
from gates.canary.prompts import load_prompts
from gates.canary.runner import CanaryConfig, CanaryResult, run_canary_sync
from gates.error_rate import ErrorRateGateSpec
from gates.latency import LatencyGateSpec
from gates.verdict import Verdict

PROMPTS = tuple(load_prompts("tiny-64").prompts)
FAST = LoopbackBehaviour(service_s=0.01, jitter_s=0.004)
SLOW = LoopbackBehaviour(service_s=0.02, jitter_s=0.004)  # the same work twice over
FAILING = LoopbackBehaviour(service_s=0.01, status=500)
NODES = ("gpu-a", "gpu-b", "gpu-c")


def fleet_config(blue: list[LoopbackServer], green: list[LoopbackServer],
                 **kw: Any) -> CanaryConfig:
    """Green instances are pods sd-green-0.. on nodes gpu-a..; blue's pods are unnamed."""
    green_fleet = tuple(Instance(s.url, pod=f"sd-green-{i}", node=NODES[i])
                        for i, s in enumerate(green))
    blue_fleet = tuple(Instance(s.url) for s in blue)
    base: dict[str, Any] = {
        "blue_url": blue_fleet[0].url, "green_url": green_fleet[0].url,
        "blue_instances": blue_fleet, "green_instances": green_fleet, "prompts": PROMPTS,
        "concurrency": 4, "warmup_requests": 1, "max_requests": 1500, "deadline_s": 120.0,
        "error_gate": ErrorRateGateSpec(max_rate=0.05), "seed": 7}
    return CanaryConfig(**{**base, **kw})


def gate(r: CanaryResult, kind: str) -> Any:
    return next(g for g in r.gates if g.kind == kind)


def by_pod(r: CanaryResult) -> dict[str, Any]:
    return {i.pod or i.url: i for i in r.instances}


def test_one_slow_green_instance_fails_the_latency_gate_by_name(tmp_path: Path) -> None:
    with loopback_fleet(FAST, FAST) as blue, loopback_fleet(FAST, SLOW, FAST) as green:
        r = run_canary_sync(fleet_config(blue, green), records_dir=tmp_path)
    latency = gate(r, "latency")
    assert r.verdict is Verdict.FAIL and latency.verdict is Verdict.FAIL, latency.reason
    assert "pod sd-green-1 on node gpu-b" in latency.reason, latency.reason
    assert "sd-green-0" not in latency.reason and "sd-green-2" not in latency.reason
    pods = by_pod(r)
    assert pods["sd-green-1"].verdict == "fail"
    assert pods["sd-green-1"].p50 > pods["sd-green-0"].p50
    # the evidence holds every instance of both arms, keyed as the CR status expects
    doc = r.to_dict()["instances"]
    assert len(doc) == 5 and [d["arm"] for d in doc] == ["blue"] * 2 + ["green"] * 3
    assert set(doc[0]) == {"arm", "url", "pod", "node", "n", "p50", "p95", "errors", "verdict"}
    assert {d["verdict"] for d in doc if d["arm"] == "blue"} == {"baseline"}
    # and each record says which instance served it
    rows = [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert {x["pod"] for x in rows if x["arm"] == "green"} == {f"sd-green-{i}" for i in range(3)}
    assert {x["node"] for x in rows if x["arm"] == "blue"} == {None}


def test_a_broken_green_instance_fails_the_error_rate_gate_by_name() -> None:
    with loopback_fleet(FAST, FAST) as blue, loopback_fleet(FAST, FAST, FAILING) as green:
        r = run_canary_sync(fleet_config(blue, green))
    errors = gate(r, "error-rate")
    assert r.verdict is Verdict.FAIL and errors.verdict is Verdict.FAIL
    assert "pod sd-green-2 on node gpu-c" in errors.reason, errors.reason
    assert "sd-green-0" not in errors.reason and "sd-green-1" not in errors.reason
    pods = by_pod(r)
    assert pods["sd-green-2"].verdict == "fail" and pods["sd-green-2"].errors > 0
    assert pods["sd-green-2"].n == 0  # a 500 says nothing about speed: never judged
    assert pods["sd-green-0"].errors == 0


def test_a_healthy_fleet_passes_with_every_instance_judged() -> None:
    """As many blue as green pods and K = 1: every pod serves the same load (the canary's
    per-arm loops keep K x N blue requests in flight, N green ones)."""
    same = LoopbackBehaviour(service_s=0.01, jitter_s=0.01)
    with loopback_fleet(same, same, same) as blue, loopback_fleet(same, same, same) as green:
        # maxRatio 1.5: a margin a healthy pod clears decisively even on a loaded CI box (at
        # 1.0 two identical pods sit on the boundary and need thousands of slices to decide)
        r = run_canary_sync(fleet_config(blue, green, concurrency=3, max_requests=4000,
                                         deadline_s=300.0,
                                         latency_gates=(LatencyGateSpec(max_ratio=1.5),)))
    latency = gate(r, "latency")
    assert r.verdict is Verdict.PASS, r.reason
    assert r.stopped_by == "decided"
    assert "every green instance passed (3)" in latency.reason
    assert [i["verdict"] for i in latency.evidence["instance_tests"]] == ["pass"] * 3
    assert latency.evidence["levels"]["instance_alpha"] == latency.evidence["alpha"] / 6
    # round-robin in seeded blocks: each green instance got a third (+-1 block) of the slices
    n = Counter({i.pod: i.n for i in r.instances if i.arm == "green"})
    assert max(n.values()) - min(n.values()) <= 3, n


def test_an_instance_with_too_few_slices_is_never_a_pass() -> None:
    with loopback_fleet(FAST) as blue, loopback_fleet(FAST, FAST, FAST) as green:
        r = run_canary_sync(fleet_config(blue, green, max_requests=30))
    latency = gate(r, "latency")
    assert r.stopped_by == "budget"
    assert latency.verdict in (Verdict.INCONCLUSIVE, Verdict.NODATA), latency.reason
    assert {i.verdict for i in r.instances if i.arm == "green"} <= {"inconclusive", "nodata"}


def test_the_spread_is_reproducible_from_the_seed(tmp_path: Path) -> None:
    def served(seed: int, out: Path) -> list[tuple[int, str]]:
        with loopback_fleet(FAST, FAST) as blue, loopback_fleet(FAST, FAST, FAST) as green:
            cfg = fleet_config(blue, green, max_requests=24, seed=seed, rate=200.0)
            run_canary_sync(cfg, records_dir=out)
            names = {s.url: f"g{i}" for i, s in enumerate(green)}
        rows = [json.loads(x) for x in (out / "requests.jsonl").read_text().splitlines()]
        return sorted((x["slice"], names[x["url"]]) for x in rows
                      if x["arm"] == "green" and x["slice"] is not None)

    first, again = served(3, tmp_path / "a"), served(3, tmp_path / "b")
    assert first == again and len(first) == 24
    assert Counter(name for _, name in first) == {"g0": 8, "g1": 8, "g2": 8}
