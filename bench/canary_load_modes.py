"""Does the canary's load pattern keep a healthy green's slices exchangeable on batching servers?

Why this exists: on two H100s an *identical* green (same fast path, dynamic batching) was rolled
back once and left undecided once by a canary whose closed loop started a slice's next requests
only when both arms had answered (``bench/results/gpu_validation_h100.md``, run of 2026-11-27).
The judge's null hypothesis is that a slice's green and blue latencies are exchangeable given
the past; a batching server's latency depends on which batch a request joins, and that shared
loop let the slower arm time both arms' arrivals. This discrete-event model of two batching
servers and the canary client measures, for each load mode, how often a green that is as fast,
1% or 3% slower (inside the 10% margin) or 30% slower (beyond it) is promoted, rolled back or
left undecided, with the real :class:`~gates.stats.sequential.SequentialJudge` deciding.

Model (every time in seconds; defaults from the H100 measurements in
``bench/results/sd_paths-nvidia-h100-80gb-hbm3.md``: 0.758 s for one 512 px / 25-step image,
2.15 s for a batch of 8):

* server: one inference worker, the sd-server batching policy (take the oldest request, wait
  until ``max_batch`` images or its ``max_wait`` has passed, run every queued request that
  fits), batch time ``a + b * n`` times ``1 + N(0, jitter)``; the responses of a batch leave one
  after another, ``serialize`` apart (base64 and JSON on the event loop);
* client: one event loop; each response costs it ``receive`` seconds (JSON, base64, checks),
  so responses arriving together are timestamped one after another; a slice sends its two
  requests in shuffled arm order, ``send`` apart;
* ``shared`` loop (the canary before 2026-11-27): ``concurrency`` lanes, each starting its next
  slice when both arms answered; ``per-arm`` loop (the canary now): each arm starts its next
  request when one of its own answered (the runner's limit on how far one arm may run ahead is
  left out); ``open`` loop: Poisson slice arrivals at ``rate`` per
  second, latency from the due time.

This is a model of the *load pattern*, not of the GPU: it chose the canary's closed-loop design
and explains a verdict; the GPU runs in ``bench/gpu_validation.py`` are the evidence.

Usage: ``python bench/canary_load_modes.py [--reps 200] [--budget 400] [--out FILE.md]``
"""

from __future__ import annotations

import argparse
import heapq
import platform
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from gates.stats.sequential import SequentialJudge
from gates.verdict import Verdict


@dataclass(frozen=True)
class Server:
    """An sd-server with dynamic batching on one GPU (times in seconds)."""

    base: float = 0.559
    per_image: float = 0.199
    jitter: float = 0.005
    max_batch: int = 8
    max_wait: float = 0.025
    serialize: float = 0.002


@dataclass(frozen=True)
class Client:
    """The canary runner's event loop."""

    send: float = 0.0003
    receive: float = 0.002
    network: float = 0.0002


@dataclass(frozen=True)
class Mode:
    """A load pattern (``loop``: ``shared``, ``per-arm`` or ``open``)."""

    label: str
    loop: str
    concurrency: int = 1
    rate: float = 0.0


class _Arm:
    """One server's queue and worker inside the event simulation."""

    def __init__(self, cfg: Server, rng: np.random.Generator,
                 deliver: Callable[[float, int], None],
                 schedule: Callable[[float, _Arm], None]) -> None:
        self.cfg, self.rng, self.deliver, self.schedule = cfg, rng, deliver, schedule
        self.pending: deque[tuple[int, float]] = deque()
        self.busy_until = 0.0
        self.wake_at: float | None = None

    def arrive(self, now: float, slice_id: int) -> None:
        self.pending.append((slice_id, now))
        self.poll(now)

    def poll(self, now: float) -> None:
        """Start a batch if the worker is free and the batching rule allows it."""
        if not self.pending:
            return
        if now < self.busy_until:
            self.schedule(self.busy_until, self)
            return
        head_deadline = self.pending[0][1] + self.cfg.max_wait
        if len(self.pending) < self.cfg.max_batch and now < head_deadline:
            if self.wake_at is None or self.wake_at > head_deadline:
                self.wake_at = head_deadline
                self.schedule(head_deadline, self)
            return
        n = min(self.cfg.max_batch, len(self.pending))
        batch = [self.pending.popleft()[0] for _ in range(n)]
        cfg = self.cfg
        took = (cfg.base + cfg.per_image * n) * (1 + cfg.jitter * float(self.rng.standard_normal()))
        self.busy_until = now + took
        self.wake_at = None
        for j, sid in enumerate(batch):
            self.deliver(self.busy_until + (j + 1) * cfg.serialize, sid)
        self.schedule(self.busy_until, self)


def simulate(mode: Mode, slices: int, seed: int, server: Server = Server(),
             client: Client = Client(), green_slowdown: float = 1.0,
             ) -> tuple[list[tuple[float, float]], float]:
    """(green, blue) latencies of ``slices`` slices in completion order, and the run's end.

    ``green_slowdown`` multiplies green's batch times (1.01: a GPU 1% slower)."""
    rng = np.random.default_rng(seed)
    events: list[tuple[float, int, str, tuple[str, int]]] = []
    seq = 0

    def push(t: float, kind: str, payload: tuple[str, int]) -> None:
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, payload))
        seq += 1

    configs = {"blue": server, "green": replace(
        server, base=server.base * green_slowdown, per_image=server.per_image * green_slowdown)}
    def wiring(name: str) -> tuple[Callable[[float, int], None], Callable[[float, _Arm], None]]:
        def deliver(t: float, sid: int) -> None:
            push(t + client.network, "resp", (name, sid))

        def schedule(t: float, _: _Arm) -> None:
            push(t, "poll", (name, -1))

        return deliver, schedule

    arms = {name: _Arm(configs[name], rng, *wiring(name)) for name in ("green", "blue")}
    client_free = 0.0
    start: dict[tuple[str, int], float] = {}
    done: dict[int, dict[str, float]] = {}
    out: list[tuple[float, float]] = []
    issued = {"green": 0, "blue": 0}

    def send(now: float, names: list[str], due: float | None = None) -> None:
        """The client sends the next request of each arm in ``names``, one after another."""
        nonlocal client_free
        t = max(now, client_free)
        for name in names:
            sid = issued[name]
            issued[name] += 1
            start[(name, sid)] = t if due is None else due
            t += client.send
            push(t + client.network, "arrive", (name, sid))
        client_free = t

    def both() -> list[str]:
        return ["green", "blue"] if rng.random() < 0.5 else ["blue", "green"]

    if mode.loop == "open":
        t = 0.0
        for _ in range(slices):
            t += float(rng.exponential(1 / mode.rate))
            push(t, "due", ("", -1))
    else:
        for _ in range(min(mode.concurrency, slices)):
            send(0.0, both())
    while events and len(out) < slices:
        now, _, kind, (name, sid) = heapq.heappop(events)
        if kind == "due":
            send(now, both(), due=now)
        elif kind == "arrive":
            arms[name].arrive(now, sid)
        elif kind == "poll":
            arms[name].poll(now)
        else:  # a response reaches the client, which spends ``receive`` on it
            client_free = max(now, client_free) + client.receive
            got = done.setdefault(sid, {})
            got[name] = client_free - start[(name, sid)]
            if mode.loop == "per-arm" and issued[name] < slices:
                send(client_free, [name])  # this arm's next request, whatever the other does
            if len(got) == 2:
                out.append((got["green"], got["blue"]))
                if mode.loop == "shared" and issued["green"] < slices:
                    send(client_free, both())  # the slice's lane starts the next slice
    return out, client_free


def judge(pairs: list[tuple[float, float]], budget: int, max_ratio: float) -> tuple[str, int]:
    j = SequentialJudge(quantile=0.95, alpha=0.01, blue_per_green=1, max_ratio=max_ratio,
                        max_slices=budget)
    for g, b in pairs:
        d = j.observe(g, [b])
        if d.decided:
            break
    d = j.decision
    return {Verdict.PASS: "promoted", Verdict.FAIL: "rolled back"}.get(
        d.verdict, "inconclusive"), d.slices


MODES = (
    Mode("shared loop, 1 slice in flight", "shared", concurrency=1),
    Mode("shared loop, 8 in flight (before)", "shared", concurrency=8),
    Mode("shared loop, 16 in flight (before)", "shared", concurrency=16),
    Mode("per-arm loop, 8 in flight (now)", "per-arm", concurrency=8),
    Mode("per-arm loop, 16 in flight (now)", "per-arm", concurrency=16),
    Mode("open loop, 2 slices/s (~54% of batch-8 capacity)", "open", rate=2.0),
    Mode("open loop, 3 slices/s (~81%)", "open", rate=3.0),
)
#: Green's batch-time factors: two within the 10% margin (should be promoted), one beyond it.
SLOWDOWNS = (1.0, 1.01, 1.03, 1.3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--budget", type=int, default=400, help="slices before 'inconclusive'")
    ap.add_argument("--max-ratio", type=float, default=1.1)
    ap.add_argument("--receive", type=float, default=Client.receive,
                    help="client seconds per response (JSON, base64, checks)")
    ap.add_argument("--serialize", type=float, default=Server.serialize,
                    help="server seconds per response after a batch (base64, JSON)")
    ap.add_argument("--seed", type=int, default=20261127)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    server, client = Server(serialize=a.serialize), Client(receive=a.receive)
    t0 = time.monotonic()
    head = " | ".join(f"green x{f:g}" for f in SLOWDOWNS)
    lines = [
        "# Canary load modes against two batching SD servers (discrete-event simulation)", "",
        f"- command: `python bench/canary_load_modes.py --reps {a.reps} --budget {a.budget} "
        f"--receive {a.receive:g} --serialize {a.serialize:g}`",
        f"- judge: sequential, P95, maxRatio {a.max_ratio:g}, alpha 0.01, K = 1, budget "
        f"{a.budget} slices; {a.reps} runs per cell, seeds from {a.seed}",
        f"- server: {server}", f"- client: {client}", "",
        "Cells: promoted / rolled back / inconclusive, then the median slices to promote and "
        "the median run's green P95 / blue P95. Green x1.01 and x1.03 are inside the 10% margin "
        "(a promotion is right, a rollback is a false one); x1.3 is beyond it.", "",
        f"| load mode | {head} | simulated s per 100 slices |",
        "|---|" + "---|" * (len(SLOWDOWNS) + 1),
    ]
    for mode in MODES:
        cells, pace = [], []
        for factor in SLOWDOWNS:
            counts = {"promoted": 0, "rolled back": 0, "inconclusive": 0}
            promote_n: list[int] = []
            ratios: list[float] = []
            for rep in range(a.reps):
                pairs, end = simulate(mode, a.budget, a.seed + rep, server, client, factor)
                pace.append(end * 100 / len(pairs))
                verdict, n = judge(pairs, a.budget, a.max_ratio)
                counts[verdict] += 1
                if verdict == "promoted":
                    promote_n.append(n)
                arr = np.asarray(pairs)
                ratios.append(float(np.quantile(arr[:, 0], 0.95) / np.quantile(arr[:, 1], 0.95)))
            med = f"{int(np.median(promote_n))}" if promote_n else "-"
            cells.append(f"{counts['promoted'] / a.reps:.0%} / {counts['rolled back'] / a.reps:.0%}"
                         f" / {counts['inconclusive'] / a.reps:.0%} · {med} · "
                         f"{np.median(ratios):.3f}")
        lines.append(f"| {mode.label} | " + " | ".join(cells) + f" | {np.median(pace):.0f} |")
        print(lines[-1], flush=True)
    lines += ["", f"Wall time {time.monotonic() - t0:.0f} s on {platform.machine()}.", ""]
    text = "\n".join(lines)
    if a.out:
        a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
