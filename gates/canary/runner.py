"""The seeded canary runner: blue and green requests in step, judged slice by slice.

A *slice* is one green request and ``K`` blue ones (``blue_per_green``) for the same prompt and
seed, sent at (about) the same moment, so whatever load or noise hits the machines then hits
both arms alike. Slices are issued

* at a fixed concurrency (``concurrency``), a closed loop *per arm*: green keeps ``N``
  requests in flight and blue ``K * N``, each arm starting its next request as soon as one of
  its own finishes; latency runs from the moment a request is sent. An arm may run at most
  ``4 N`` slices ahead of the other (``lead``), so the arms stay in step and a stalled green
  does not let blue spend the budget alone; or
* at an open-loop arrival rate (``rate`` slices per second on average, Poisson arrivals drawn
  from ``seed``, whatever is still in flight), all of a slice's requests sent together in a
  shuffled arm order: latency runs from the moment the slice was *due*, so a client or server
  that falls behind shows up as latency instead of silently lowering the load (no coordinated
  omission).

Why the closed loop is per arm: a loop that starts a slice's next requests only when *both*
arms answered lets the slower arm set both arms' arrival times. Against batching servers this
amplifies any small speed difference: the faster arm receives its next requests while idle and
batches them together, the slower one receives them while still busy and splits them across
batches. ``bench/canary_load_modes.py`` models two batching H100 servers: a green 1% slower
(well inside a 10% margin) came out 2% slower and was rolled back in 100% of shared-loop runs
at 8 in flight, and on two real H100s an identical green was rolled back this way
(``bench/results/gpu_validation_h100.md``). Per-arm loops let each server's queue follow its
own pace (the same green: 1.1% slower, promoted). The open loop has no feedback at all; use it
to load a service like production traffic does.

Before measuring, each arm gets ``warmup_requests`` sequential requests (first-request
compilation, autotuning, cache fills) that are recorded but never judged. Measured requests are
never retried: a failure is data, classified (:data:`~gates.canary.records.ERROR_KINDS`) and
judged by the error-rate gate (:mod:`gates.canary.evaluation` says how failed slices count).

The run ends at the first of: the gates are done (:attr:`CanaryEvaluation.finished`; slices
still in flight are cancelled and recorded as such), the budget of ``max_requests`` slices
(= green requests) is spent, the hard ``deadline_s`` passes (everything in flight is
cancelled at once, so a green that never answers cannot hold the run past it), or the caller's
``should_stop`` returns a reason (``stopped_by`` ``cancelled``: an abort or rollback asked for
while the canary runs). ``should_stop`` is asked after every finished slice (unless a slice
asked it less than :data:`_STOP_CHECK_S` ago) and every :data:`_STOP_POLL_S` whatever happens,
warm-up included; what is in flight then is cancelled and recorded as such, like at the
deadline.

Bodies are read streamed, at most ``max_body_bytes`` of each (:mod:`gates.bounded`): a larger
answer is a ``bad_payload`` error, read no further, so an endless body cannot exhaust the
client's memory. The per-request ``timeout_s`` bounds the whole exchange (connect, headers and
body), and latency runs until the body's last byte, as before.

Connections: each request in flight uses a small httpx client of its arm, reused by later
requests (an open-loop slice takes one client per arm; its ``K`` blue requests share one).
httpcore's pool scans every connection for every request, so one shared pool with 64
connections costs milliseconds of client CPU per request at concurrency 32, which is latency
added to whatever finishes meanwhile; small clients keep each pool at ``K`` connections or fewer.

Prompt ``i mod len(prompts)`` drives slice ``i``; its seed is the prompt's seed plus the cycle
number ``i // len(prompts)``, so a response cache on either arm cannot answer repeated prompts.
"""

from __future__ import annotations

import asyncio
import math
import random
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from numpy.typing import NDArray

from gates.bounded import CANARY_MAX_BYTES, BoundedReadError, aread_bounded
from gates.canary.adapters import ImageAPI, get_adapter
from gates.canary.adapters.base import BadPayloadError
from gates.canary.evaluation import CanaryEvaluation, GateResult, SliceOutcome, combine_verdicts
from gates.canary.output_check import (
    ImageFingerprint,
    OutputCheckResult,
    OutputCheckSpec,
    digest,
    fingerprint,
    needs_pixels,
)
from gates.canary.prompts import Prompt
from gates.canary.records import ARMS, Arm, ErrorKind, RecordWriter, RequestRecord
from gates.error_rate import ErrorRateGateSpec
from gates.latency import LatencyGateSpec
from gates.verdict import Verdict

__all__ = ["CanaryConfig", "CanaryProgress", "CanaryResult", "StopReason", "parse_server_timing",
           "run_canary", "run_canary_sync"]

StopReason = Literal["decided", "budget", "deadline", "cancelled"]
# Slices with more image bytes than this are decoded in a worker thread, so PNG decoding (tens
# of ms at 512 px) does not delay the timestamps of other requests finishing meanwhile.
_INLINE_DECODE_BYTES = 256 * 1024
_WARMUP_SEED_OFFSET = 2**31  # warm-up seeds: never those of measured requests
_DETAIL_CHARS = 300
#: ``should_stop`` is polled this often whatever happens (requests in flight, warm-up) ...
_STOP_POLL_S = 0.25
#: ... and asked after a finished slice unless it was asked less than this long ago.
_STOP_CHECK_S = 0.05


@dataclass(frozen=True)
class CanaryConfig:
    """What to send where, how fast, for how long, and what the gates require.

    Raises:
        ValueError: from ``__post_init__`` on any value out of range.
    """

    blue_url: str
    green_url: str
    prompts: tuple[Prompt, ...]
    api: str = "openai"
    model: str | None = None
    blue_per_green: int = 1
    concurrency: int = 8
    rate: float | None = None
    max_requests: int = 600
    warmup_requests: int = 2
    timeout_s: float = 120.0
    deadline_s: float | None = 1800.0
    latency_gates: tuple[LatencyGateSpec, ...] = (LatencyGateSpec(),)
    error_gate: ErrorRateGateSpec = field(default_factory=ErrorRateGateSpec)
    output_check: OutputCheckSpec = field(default_factory=OutputCheckSpec)
    headers: tuple[tuple[str, str], ...] = ()
    verify: bool | str = True
    seed: int = 0
    max_body_bytes: int = CANARY_MAX_BYTES

    def __post_init__(self) -> None:
        for name, url in (("blue_url", self.blue_url), ("green_url", self.green_url)):
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{name} must start with http:// or https://, got {url!r}")
        checks = [
            (len(self.prompts) >= 1, "prompts must not be empty"),
            (self.blue_per_green >= 1, "blue_per_green must be >= 1"),
            (self.concurrency >= 1, "concurrency must be >= 1"),
            (self.rate is None or (math.isfinite(self.rate) and self.rate > 0),
             "rate must be a finite number > 0 (slices per second)"),
            (self.max_requests >= 1, "max_requests must be >= 1"),
            (self.warmup_requests >= 0, "warmup_requests must be >= 0"),
            (math.isfinite(self.timeout_s) and self.timeout_s > 0, "timeout_s must be > 0"),
            (self.deadline_s is None or self.deadline_s > 0, "deadline_s must be > 0"),
            (self.max_body_bytes >= 1, "max_body_bytes must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        get_adapter(self.api)  # unknown API names fail here, before any request


@dataclass(frozen=True)
class CanaryProgress:
    """A snapshot for live displays, taken after each finished slice."""

    slices: int
    budget: int
    requests: dict[Arm, int]
    errors: dict[Arm, int]
    p95: dict[Arm, float]
    judge: str
    elapsed_s: float


@dataclass(frozen=True)
class CanaryResult:
    """The outcome of a canary run.

    Attributes:
        verdict: combined verdict of the gating checks (:func:`combine_verdicts`).
        reason: why, naming the deciding gate.
        gates: each gating check's result.
        output: the output check (also when it only reports).
        stopped_by: ``decided``, ``budget``, ``deadline`` or ``cancelled`` (``should_stop``
            returned a reason; ``reason`` starts with it).
        slices: ``{"sent", "judged", "excluded", "cancelled"}``.
        requests: measured requests per arm in consumed slices (warm-up and cancelled ones
            not included).
        errors: ``{arm: {kind: count}}``.
        latencies: judged latencies per arm, in the order the judge consumed them.
        elapsed_s: wall time of the run, warm-up included.
        records: paths of the record files, when written.
    """

    verdict: Verdict
    reason: str
    gates: tuple[GateResult, ...]
    output: OutputCheckResult
    stopped_by: StopReason
    slices: dict[str, int]
    requests: dict[Arm, int]
    errors: dict[str, dict[str, int]]
    latencies: dict[Arm, NDArray[np.float64]]
    elapsed_s: float
    records: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (per-arm latency summaries are the caller's to add)."""
        o = self.output
        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "stopped_by": self.stopped_by,
            "elapsed_s": round(self.elapsed_s, 3),
            "slices": self.slices,
            "requests": self.requests,
            "errors": self.errors,
            "gates": [g.to_dict() for g in self.gates],
            "output_check": {
                "mode": o.mode, "verdict": o.verdict.value, "compared": o.compared,
                "identical": o.identical, "mismatches": o.mismatches,
                "undecidable": o.undecidable, "first_mismatch": o.first_mismatch,
                "worst_distance": None if math.isnan(o.worst_distance) else o.worst_distance,
                "reason": o.reason},
            "records": self.records,
        }


def parse_server_timing(header: str | None) -> dict[str, float] | None:
    """``Server-Timing: queue;dur=12.5, inference;dur=800`` -> ``{"queue": 0.0125, ...}``.

    Metrics without a numeric ``dur`` are skipped; ``None`` when nothing usable is there.
    """
    if not header:
        return None
    out: dict[str, float] = {}
    for metric in header.split(","):
        name, *params = (p.strip() for p in metric.split(";"))
        for p in params:
            key, _, value = p.partition("=")
            if key.strip().lower() == "dur" and name:
                try:
                    dur = float(value.strip().strip('"'))
                except ValueError:
                    continue
                if math.isfinite(dur) and dur >= 0:
                    out[name] = dur / 1000.0
    return out or None


_LEAD_ROUNDS = 4  # closed loop: an arm may run this many times ``concurrency`` slices ahead


class _Stop(Exception):  # noqa: N818 - control flow, not an error
    """Raised inside the task group once the gates are done, to cancel the other slices."""


class _Cancel(Exception):  # noqa: N818 - control flow, not an error
    """Raised once ``should_stop`` gave a reason, to cancel everything in flight."""


class _Run:
    """One run's mutable state; :func:`run_canary` is its only user."""

    def __init__(self, cfg: CanaryConfig, new_client: Callable[[Arm], httpx.AsyncClient],
                 writer: RecordWriter | None,
                 on_progress: Callable[[CanaryProgress], None] | None,
                 should_stop: Callable[[], str | None] | None = None) -> None:
        self.cfg = cfg
        self.should_stop = should_stop
        self.stop_reason: str | None = None
        self.last_slice_check = -math.inf  # when a finished slice last asked should_stop
        self.api: ImageAPI = get_adapter(cfg.api, model=cfg.model)
        self.new_client = new_client
        self.clients: list[httpx.AsyncClient] = []
        self.free: dict[Arm, list[httpx.AsyncClient]] = {arm: [] for arm in ARMS}
        self.last_progress = -math.inf
        self.writer = writer
        self.on_progress = on_progress
        self.rng = random.Random(cfg.seed)
        self.evaluation = CanaryEvaluation(
            blue_per_green=cfg.blue_per_green, latency_gates=cfg.latency_gates,
            error_gate=cfg.error_gate, output_check=cfg.output_check)
        self.sent = 0
        self.cancelled: list[RequestRecord] = []
        self.perf0 = time.perf_counter()
        self.wall0 = time.time()

    # -- requests ------------------------------------------------------------------------

    def acquire(self, arm: Arm) -> httpx.AsyncClient:
        """A client of ``arm`` no request is using (a new one when all are busy)."""
        if not self.free[arm]:
            self.clients.append(self.new_client(arm))
            return self.clients[-1]
        return self.free[arm].pop()

    def release(self, arm: Arm, client: httpx.AsyncClient) -> None:
        self.free[arm].append(client)

    async def request(self, client: httpx.AsyncClient, arm: Arm, replica: int, order: int,
                      prompt: Prompt,
                      seed: int, slice_no: int | None,
                      due: float | None = None) -> RequestRecord:
        """Send one request, time it, classify the outcome; never raises except on cancel."""
        req = self.api.request(prompt, seed)
        built = client.build_request("POST", req.path, json=req.body)  # not part of the timing
        t0 = time.perf_counter()
        start = t0 if due is None else due

        def record(latency: float, **outcome: Any) -> RequestRecord:
            return RequestRecord(slice=slice_no, arm=arm, replica=replica, order=order,
                                 prompt_id=prompt.id, seed=seed,
                                 start=self.wall0 + (start - self.perf0), latency_s=latency,
                                 **outcome)

        try:
            try:
                async with asyncio.timeout(self.cfg.timeout_s):  # the whole exchange
                    resp = await aread_bounded(client, built, max_bytes=self.cfg.max_body_bytes)
            except TimeoutError:
                return record(time.perf_counter() - start, error="timeout", censored=True,
                              detail=f"no answer within {self.cfg.timeout_s:g} s")
            except BoundedReadError as e:  # over the body cap: read no further, unusable
                return record(time.perf_counter() - start, error="bad_payload",
                              status=e.status_code, detail=_detail(str(e)))
            except httpx.TransportError as e:
                return record(time.perf_counter() - start, error="connect",
                              detail=_detail(f"{type(e).__name__}: {e}"))
            except httpx.HTTPError as e:  # e.g. a broken content-encoding: an unusable answer
                return record(time.perf_counter() - start, error="bad_payload",
                              detail=_detail(f"{type(e).__name__}: {e}"))
            latency = time.perf_counter() - start
            # Let other requests whose answers are already in take their timestamps before
            # this one spends CPU on parsing and hashing.
            await asyncio.sleep(0)
            answer: dict[str, Any] = {
                "status": resp.status_code,
                "server_timing": parse_server_timing(resp.headers.get("server-timing"))}
            kind = _status_kind(resp.status_code)
            if kind is not None:
                return record(latency, error=kind, detail=_detail(resp.text), **answer)
            try:
                payloads = tuple(self.api.images(resp.content))
            except BadPayloadError as e:
                return record(latency, error="bad_payload", detail=_detail(str(e)), **answer)
            return record(latency, images=tuple(digest(p) for p in payloads), payloads=payloads,
                          **answer)
        except asyncio.CancelledError:
            self.cancelled.append(record(time.perf_counter() - start, excluded="cancelled"))
            raise

    # -- warm-up -------------------------------------------------------------------------

    async def warmup(self) -> None:
        """``warmup_requests`` sequential requests per arm, both arms at once; never judged."""
        async def one_arm(arm: Arm) -> list[RequestRecord]:
            client, out = self.acquire(arm), []
            for i in range(self.cfg.warmup_requests):
                p = self.cfg.prompts[i % len(self.cfg.prompts)]
                rec = await self.request(client, arm, 0, 0, p,
                                         (p.seed + _WARMUP_SEED_OFFSET) % 2**32, None)
                out.append(replace(rec, excluded="warmup"))
            self.release(arm, client)
            return out

        if self.cfg.warmup_requests:
            done = await asyncio.gather(*(one_arm(a) for a in ARMS))
            if self.writer is not None:
                self.writer.write([r for arm_records in done for r in arm_records])

    # -- slices --------------------------------------------------------------------------

    def slice_request(self, number: int) -> tuple[Prompt, int]:
        """Slice ``number``'s prompt and seed (every arm sends the same)."""
        prompt = self.cfg.prompts[number % len(self.cfg.prompts)]
        return prompt, (prompt.seed + number // len(self.cfg.prompts)) % 2**32

    async def run_slice(self, number: int, due: float) -> None:
        """Open loop: send slice ``number``'s requests together, in a shuffled arm order."""
        self.sent += 1
        prompt, seed = self.slice_request(number)
        arms: list[tuple[Arm, int]] = [("green", 0)]
        arms += [("blue", j) for j in range(self.cfg.blue_per_green)]
        self.rng.shuffle(arms)
        clients = {arm: self.acquire(arm) for arm in ARMS}
        tasks = [asyncio.create_task(self.request(clients[arm], arm, rep, order, prompt, seed,
                                                  number, due))
                 for order, (arm, rep) in enumerate(arms)]
        try:
            records = await asyncio.gather(*tasks)
        except asyncio.CancelledError:  # finished requests of an unjudged slice: cancelled too
            self.cancel_finished([t.result() for t in tasks
                                  if t.done() and not t.cancelled() and t.exception() is None])
            raise
        for arm, client in clients.items():
            self.release(arm, client)
        await self.finish_slice(number, records)

    def cancel_finished(self, records: Sequence[RequestRecord]) -> None:
        """Answers that arrived for a slice the run will never judge."""
        self.cancelled.extend(replace(r, excluded="cancelled", payloads=()) for r in records)

    async def finish_slice(self, number: int, records: list[RequestRecord]) -> None:
        """Judge slice ``number`` once all its requests answered, write it, report progress;
        raise :class:`_Stop` when the gates are done, :class:`_Cancel` when asked to stop."""
        if needs_pixels(*_images(records)):
            records = await _decoded(records)
        green = next(r for r in records if r.arm == "green")
        blues = tuple(sorted((r for r in records if r.arm == "blue"), key=lambda r: r.replica))
        judged = self.evaluation.consume(SliceOutcome(number, green, blues))
        if self.writer is not None:
            self.writer.write(sorted(judged, key=lambda r: r.order))
        finished = self.evaluation.finished
        now = time.perf_counter()
        consumed = self.evaluation.slices_judged + self.evaluation.slices_excluded
        if self.on_progress is not None and (finished or now - self.last_progress >= 0.1
                                             or consumed == self.cfg.max_requests):
            self.last_progress = now
            self.on_progress(self.progress())
        if finished:
            raise _Stop
        if self.should_stop is not None and now - self.last_slice_check >= _STOP_CHECK_S:
            self.last_slice_check = now
            self.check_stop()

    # -- cancellation --------------------------------------------------------------------

    def check_stop(self) -> None:
        """Ask ``should_stop``; raise :class:`_Cancel` with its reason if it gave one."""
        if self.should_stop is None:
            return
        reason = self.should_stop()
        if reason:
            self.stop_reason = reason
            raise _Cancel(reason)

    async def watch(self) -> None:
        """Poll ``should_stop`` every :data:`_STOP_POLL_S` until cancelled (by the end of the
        run) or asked to stop (:class:`_Cancel` ends the run's task group)."""
        while True:
            await asyncio.sleep(_STOP_POLL_S)
            self.check_stop()

    async def work(self) -> None:
        """Warm-up, then the closed or the open loop."""
        await self.warmup()
        if self.cfg.rate is None:
            await self.closed_loop()
        else:
            await self.open_loop(self.cfg.rate)

    async def supervised(self) -> None:
        """:meth:`work`, with :meth:`watch` beside it when there is a ``should_stop``."""
        if self.should_stop is None:
            await self.work()
            return
        self.check_stop()  # asked before anything is sent
        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(self.watch())
            tg.create_task(self.work()).add_done_callback(lambda _: watcher.cancel())

    async def closed_loop(self) -> None:
        """Per arm, ``concurrency`` workers per request of a slice, each sending one request
        after another; a slice is judged when its last request answers (module docstring)."""
        cfg = self.cfg
        budget, lead = cfg.max_requests, _LEAD_ROUNDS * cfg.concurrency
        slots: dict[Arm, Iterator[tuple[int, int]]] = {
            "green": ((n, 0) for n in range(budget)),
            "blue": ((n, j) for n in range(budget) for j in range(cfg.blue_per_green))}
        started: dict[Arm, int] = {arm: 0 for arm in ARMS}  # slices each arm has begun
        moved = asyncio.Condition()
        waiting: dict[int, list[RequestRecord]] = {}  # slices with answers still missing

        async def worker(arm: Arm, other: Arm) -> None:
            client = self.acquire(arm)
            for n, replica in slots[arm]:
                def in_step(n: int = n) -> bool:
                    return n < started[other] + lead

                async with moved:
                    await moved.wait_for(in_step)
                    started[arm] = max(started[arm], n + 1)
                    self.sent = max(self.sent, n + 1)
                    moved.notify_all()
                prompt, seed = self.slice_request(n)
                rec = await self.request(client, arm, replica, 0, prompt, seed, n)
                group = waiting.setdefault(n, [])
                group.append(rec)
                if len(group) == cfg.blue_per_green + 1:
                    del waiting[n]
                    ranked = sorted(group, key=lambda r: r.start)  # order sent on the wire
                    await self.finish_slice(n, [replace(r, order=i)
                                                for i, r in enumerate(ranked)])

        try:
            async with asyncio.TaskGroup() as tg:
                pools: list[tuple[Arm, Arm]] = [("green", "blue")] * min(cfg.concurrency, budget)
                pools += [("blue", "green")] * (len(pools) * cfg.blue_per_green)
                self.rng.shuffle(pools)  # neither arm always first on the wire
                for arm, other in pools:
                    tg.create_task(worker(arm, other))
        finally:
            for group in waiting.values():
                self.cancel_finished(group)

    async def open_loop(self, rate: float) -> None:
        """Launch slices at Poisson arrival times of mean rate ``rate``, whatever is in flight."""
        arrivals = random.Random(self.cfg.seed ^ 0x0A11)  # independent of the arm shuffle
        due = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for n in range(self.cfg.max_requests):
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tg.create_task(self.run_slice(n, due))
                due += arrivals.expovariate(rate)

    def progress(self) -> CanaryProgress:
        ev = self.evaluation
        return CanaryProgress(
            slices=ev.slices_judged + ev.slices_excluded, budget=self.cfg.max_requests,
            requests=dict(ev.requests),
            errors={a: sum(ev.error_counts[a].values()) for a in ARMS},
            p95={a: float(np.quantile(ev.latencies[a], 0.95)) if ev.latencies[a] else math.nan
                 for a in ARMS},
            judge=ev.latency_state(), elapsed_s=time.perf_counter() - self.perf0)


async def run_canary(config: CanaryConfig, *, records_dir: str | Path | None = None,
                     on_progress: Callable[[CanaryProgress], None] | None = None,
                     transport: httpx.AsyncBaseTransport | None = None,
                     should_stop: Callable[[], str | None] | None = None) -> CanaryResult:
    """Run a canary against blue and green and judge it (see the module docstring).

    Args:
        config: the run's settings and gates.
        records_dir: where to write ``requests.jsonl``, ``blue.jsonl`` and ``green.jsonl``
            (:mod:`gates.canary.records`); nothing is written when ``None``.
        on_progress: called with the state after a finished slice, at most ten times a
            second, and after the slice that ends the run by deciding or by the budget.
        transport: an httpx transport for both arms (tests); the network otherwise.
        should_stop: returns why the run must stop now (e.g. ``"abort requested by user"``)
            or ``None``; asked after each finished slice and every 0.25 s (module docstring).
            On a reason, everything in flight is cancelled and the result has ``stopped_by``
            ``cancelled``. Called in the event loop's thread: keep it quick.

    Raises:
        OSError: the records directory cannot be written.
    """
    # One TLS context for every client: building one loads the CA bundle (~35 ms of CPU).
    verify: bool | ssl.SSLContext = False if config.verify is False else \
        ssl.create_default_context(cafile=None if config.verify is True else config.verify)
    urls = {"blue": config.blue_url, "green": config.green_url}

    def new_client(arm: Arm) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=urls[arm], headers=dict(config.headers), verify=verify, timeout=None,
            transport=transport, follow_redirects=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))

    writer = RecordWriter(records_dir) if records_dir is not None else None
    run = _Run(config, new_client, writer, on_progress, should_stop)
    stopped_by: StopReason = "budget"
    try:
        async with asyncio.timeout(config.deadline_s):
            try:
                await run.supervised()
            except* _Stop:
                stopped_by = "decided"
            except* _Cancel:
                stopped_by = "cancelled"
    except TimeoutError:
        stopped_by = "deadline"
    finally:
        for client in run.clients:
            await client.aclose()
        if writer is not None:
            writer.write(run.cancelled)
            writer.close()
    return _result(run, stopped_by)


def run_canary_sync(config: CanaryConfig, **kwargs: Any) -> CanaryResult:
    """:func:`run_canary` in a fresh event loop (for callers without one)."""
    return asyncio.run(run_canary(config, **kwargs))


def _result(run: _Run, stopped_by: StopReason) -> CanaryResult:
    ev = run.evaluation
    gates = ev.gate_results()
    verdict, reason = combine_verdicts(gates)
    if stopped_by == "cancelled":
        reason = f"cancelled ({run.stop_reason}) before the gates decided: {reason}"
    consumed = ev.slices_judged + ev.slices_excluded
    return CanaryResult(
        verdict=verdict, reason=reason, gates=tuple(gates), output=ev.output,
        stopped_by=stopped_by,
        slices={"sent": run.sent, "judged": ev.slices_judged, "excluded": ev.slices_excluded,
                "cancelled": run.sent - consumed},
        requests=dict(ev.requests), errors=ev.errors_by_kind(),
        latencies={a: np.asarray(ev.latencies[a], dtype=np.float64) for a in ARMS},
        elapsed_s=time.perf_counter() - run.perf0,
        records={k: str(v) for k, v in run.writer.paths.items()} if run.writer else None)


def _status_kind(status: int) -> ErrorKind | None:
    if 200 <= status < 300:
        return None
    if status >= 500:
        return "http_5xx"
    if status >= 400:
        return "http_4xx"
    return "bad_payload"  # 1xx/3xx: redirects are not followed for measured requests


def _detail(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS - 3] + "..."


def _images(records: Sequence[RequestRecord]) -> tuple[
        tuple[ImageFingerprint, ...], list[tuple[ImageFingerprint, ...]]]:
    """Green's images and those of every blue that returned some (empty if green has none)."""
    green = next(r.images for r in records if r.arm == "green")
    return green, [r.images for r in records if r.arm == "blue" and r.images and green]


async def _decoded(records: list[RequestRecord]) -> list[RequestRecord]:
    """The records with full fingerprints (pixel hash, signature) of their images."""
    def compute() -> list[RequestRecord]:
        return [replace(r, images=tuple(fingerprint(p) for p in r.payloads)) if r.payloads
                else r for r in records]

    if sum(len(p) for r in records for p in r.payloads) > _INLINE_DECODE_BYTES:
        return await asyncio.to_thread(compute)
    return compute()
