"""The canary's loops: warm-up, then slices in a closed loop per arm or an open loop.

:class:`CanaryRun` holds one run's state (clients, the evaluation, records) and issues the
slices the way :mod:`gates.canary.runner`'s module docstring describes; each request is sent
by :func:`gates.canary.exchange.send` and each finished slice is judged by
:class:`~gates.canary.evaluation.CanaryEvaluation`. It ends by raising :class:`StopDecided`
(the gates are done) or :class:`StopCancelled` (``should_stop`` gave a reason), or by running
out of slices; the runner maps that to the result's ``stopped_by``.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import httpx
import numpy as np

from gates.canary.adapters import ImageAPI, get_adapter
from gates.canary.config import CanaryConfig
from gates.canary.evaluation import CanaryEvaluation, SliceOutcome
from gates.canary.exchange import decoded, images_of, send
from gates.canary.fleet import Instance, InstancePicker
from gates.canary.outcome import CanaryProgress
from gates.canary.output_check import needs_pixels
from gates.canary.prompts import Prompt
from gates.canary.records import ARMS, Arm, RecordWriter, RequestRecord

__all__ = ["STOP_CHECK_S", "STOP_POLL_S", "CanaryRun", "StopCancelled", "StopDecided"]

_WARMUP_SEED_OFFSET = 2**31  # warm-up seeds: never those of measured requests
#: ``should_stop`` is polled this often whatever happens (requests in flight, warm-up) ...
STOP_POLL_S = 0.25
#: ... and asked after a finished slice unless it was asked less than this long ago.
STOP_CHECK_S = 0.05
_LEAD_ROUNDS = 4  # closed loop: an arm may run this many times ``concurrency`` slices ahead


class StopDecided(Exception):  # noqa: N818 - control flow, not an error
    """Raised inside the task group once the gates are done, to cancel the other slices."""


class StopCancelled(Exception):  # noqa: N818 - control flow, not an error
    """Raised once ``should_stop`` gave a reason, to cancel everything in flight."""



class CanaryRun:
    """One run's mutable state and its loops; :func:`gates.canary.runner.run_canary` is its
    only user."""

    def __init__(self, cfg: CanaryConfig, new_client: Callable[[str], httpx.AsyncClient],
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
        #: Idle clients per (arm, instance): each client talks to one instance's base URL.
        self.free: dict[tuple[Arm, Instance], list[httpx.AsyncClient]] = {}
        self.pickers = {arm: InstancePicker(cfg.fleet(arm), cfg.seed, stream)
                        for stream, arm in enumerate(ARMS)}
        self.last_progress = -math.inf
        self.writer = writer
        self.on_progress = on_progress
        self.rng = random.Random(cfg.seed)
        self.evaluation = CanaryEvaluation(
            blue_per_green=cfg.blue_per_green, latency_gates=cfg.latency_gates,
            error_gate=cfg.error_gate, output_check=cfg.output_check,
            fleet={arm: cfg.fleet(arm) for arm in ARMS})
        self.sent = 0
        self.cancelled: list[RequestRecord] = []
        self.perf0 = time.perf_counter()
        self.wall0 = time.time()

    # -- requests ------------------------------------------------------------------------

    def instance(self, arm: Arm, number: int, replica: int) -> Instance:
        """The instance serving slice ``number``'s request ``replica`` of ``arm``: the arm's
        requests are numbered ``n * K + j`` (green: ``n``) and spread as
        :mod:`gates.canary.fleet` says."""
        k = 1 if arm == "green" else self.cfg.blue_per_green
        return self.pickers[arm].pick(number * k + replica)

    def acquire(self, arm: Arm, instance: Instance) -> httpx.AsyncClient:
        """A client of ``instance`` no request is using (a new one when all are busy)."""
        free = self.free.setdefault((arm, instance), [])
        if not free:
            self.clients.append(self.new_client(instance.url))
            return self.clients[-1]
        return free.pop()

    def release(self, arm: Arm, instance: Instance, client: httpx.AsyncClient) -> None:
        self.free[arm, instance].append(client)

    async def request(self, arm: Arm, instance: Instance, replica: int, order: int,
                      prompt: Prompt, seed: int, slice_no: int | None,
                      due: float | None = None,
                      client: httpx.AsyncClient | None = None) -> RequestRecord:
        """Send one request to ``instance``, time it, classify the outcome
        (:func:`gates.canary.exchange.send`); never raises except on cancel, when the request
        is recorded as cancelled. Uses ``client`` if given, else an idle one of the instance."""
        def record(start: float, latency: float, **outcome: Any) -> RequestRecord:
            return RequestRecord(slice=slice_no, arm=arm, replica=replica, order=order,
                                 prompt_id=prompt.id, seed=seed,
                                 start=self.wall0 + (start - self.perf0), latency_s=latency,
                                 instance=instance, **outcome)

        own = client is None
        use = self.acquire(arm, instance) if client is None else client
        rec = await send(use, self.api, prompt, seed, timeout_s=self.cfg.timeout_s,
                         max_body_bytes=self.cfg.max_body_bytes, due=due, record=record,
                         on_cancel=self.cancelled.append)
        if own:  # not on cancel: a cancelled exchange's client is not reused
            self.release(arm, instance, use)
        return rec

    # -- warm-up -------------------------------------------------------------------------

    async def warmup(self) -> None:
        """``warmup_requests`` sequential requests per instance, every instance of both arms
        at once (each pod compiles and fills its caches on its own); never judged."""
        async def one_instance(arm: Arm, instance: Instance) -> list[RequestRecord]:
            out = []
            for i in range(self.cfg.warmup_requests):
                p = self.cfg.prompts[i % len(self.cfg.prompts)]
                rec = await self.request(arm, instance, 0, 0, p,
                                         (p.seed + _WARMUP_SEED_OFFSET) % 2**32, None)
                out.append(replace(rec, excluded="warmup"))
            return out

        if self.cfg.warmup_requests:
            done = await asyncio.gather(*(one_instance(a, i) for a in ARMS
                                          for i in self.cfg.fleet(a)))
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
        # One client per instance the slice reaches (its requests to one instance share it).
        where = {(arm, rep): self.instance(arm, number, rep) for arm, rep in arms}
        clients = {(arm, inst): self.acquire(arm, inst) for (arm, _), inst in where.items()}
        tasks = [asyncio.create_task(self.request(
            arm, where[arm, rep], rep, order, prompt, seed, number, due,
            client=clients[arm, where[arm, rep]]))
                 for order, (arm, rep) in enumerate(arms)]
        try:
            records = await asyncio.gather(*tasks)
        except asyncio.CancelledError:  # finished requests of an unjudged slice: cancelled too
            self.cancel_finished([t.result() for t in tasks
                                  if t.done() and not t.cancelled() and t.exception() is None])
            raise
        for (arm, inst), client in clients.items():
            self.release(arm, inst, client)
        await self.finish_slice(number, records)

    def cancel_finished(self, records: Sequence[RequestRecord]) -> None:
        """Answers that arrived for a slice the run will never judge."""
        self.cancelled.extend(replace(r, excluded="cancelled", payloads=()) for r in records)

    async def finish_slice(self, number: int, records: list[RequestRecord]) -> None:
        """Judge slice ``number`` once all its requests answered, write it, report progress;
        raise :class:`StopDecided` when the gates are done, :class:`StopCancelled` when asked
        to stop."""
        if needs_pixels(*images_of(records)):
            records = await decoded(records)
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
            raise StopDecided
        if self.should_stop is not None and now - self.last_slice_check >= STOP_CHECK_S:
            self.last_slice_check = now
            self.check_stop()

    # -- cancellation --------------------------------------------------------------------

    def check_stop(self) -> None:
        """Ask ``should_stop``; raise :class:`StopCancelled` with its reason if it gave one."""
        if self.should_stop is None:
            return
        reason = self.should_stop()
        if reason:
            self.stop_reason = reason
            raise StopCancelled(reason)

    async def watch(self) -> None:
        """Poll ``should_stop`` every :data:`STOP_POLL_S` until cancelled (by the end of the
        run) or asked to stop (:class:`StopCancelled` ends the run's task group)."""
        while True:
            await asyncio.sleep(STOP_POLL_S)
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
            for n, replica in slots[arm]:
                def in_step(n: int = n) -> bool:
                    return n < started[other] + lead

                async with moved:
                    await moved.wait_for(in_step)
                    started[arm] = max(started[arm], n + 1)
                    self.sent = max(self.sent, n + 1)
                    moved.notify_all()
                prompt, seed = self.slice_request(n)
                rec = await self.request(arm, self.instance(arm, n, replica), replica, 0,
                                         prompt, seed, n)
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
