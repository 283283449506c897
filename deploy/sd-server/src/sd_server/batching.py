"""Bounded queue with dynamic batching of compatible requests.

Why batch: on an H100, 16 requests served one at a time reach P95 16.4 s; in batches of 8 the
same load reaches 3.4 s (``gpu-anchors.md``). A batch holds requests with the same size, steps and
guidance (the pipeline runs them in one call); prompts, negative prompts and seeds may differ.

Policy: when the worker is free, it takes the oldest request and waits until either the batch is
full (``max_batch`` images) or the oldest request has waited ``max_wait_s``, then runs every
compatible queued request that fits. Under load the oldest request has already waited longer
than ``max_wait_s``, so batches form with no added delay. A single request is never split, so a
request with ``n`` above ``max_batch`` runs as one batch of ``n``.

Overload is explicit: when ``queue_size`` requests wait, :meth:`Batcher.submit` raises
:class:`QueueFullError` with a Retry-After estimated from recent batch times, and the API
answers 503. Inference runs in one dedicated thread, so the event loop keeps answering probes
and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sd_server.config import BatchingConfig
from sd_server.engine import GenerationSpec, Item
from sd_server.faults import FaultInjector, InjectedFaultError
from sd_server.metrics import Metrics

__all__ = ["Batcher", "JobResult", "QueueFullError", "ServerClosingError"]

Generate = Callable[[GenerationSpec, Sequence[Item]], list[bytes]]


class QueueFullError(Exception):
    """The queue holds ``queue_size`` requests; retry after ``retry_after_s`` seconds."""

    def __init__(self, depth: int, retry_after_s: int) -> None:
        self.depth = depth
        self.retry_after_s = retry_after_s
        super().__init__(f"queue full ({depth} requests waiting)")


class ServerClosingError(Exception):
    """The server shut down before this request ran."""


@dataclass(frozen=True)
class JobResult:
    """One request's images and where its time went."""

    images: list[bytes]
    queue_s: float
    inference_s: float
    batch_images: int


@dataclass
class _Job:
    spec: GenerationSpec
    items: list[Item]
    enqueued: float
    future: asyncio.Future[JobResult]


class Batcher:
    """Queue plus the one worker that feeds the pipeline."""

    def __init__(
        self,
        generate: Generate,
        cfg: BatchingConfig,
        metrics: Metrics,
        faults: FaultInjector,
        *,
        initial_batch_s: float = 1.0,
    ) -> None:
        self._generate = generate
        self._cfg = cfg
        self._metrics = metrics
        self._faults = faults
        self._pending: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._running = 0
        self._batch_s = initial_batch_s  # EWMA of batch wall time, for Retry-After
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sd-infer")
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sd-batcher")

    async def close(self) -> None:
        """Stop the worker and fail whatever still waits."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(ServerClosingError("server shutting down"))
        self._metrics.queue_depth.set(0)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained one batch's worth of room."""
        queued = sum(len(j.items) for j in self._pending)
        batches = math.ceil(queued / self._cfg.max_batch) + (1 if self._running else 0)
        return max(1, math.ceil(batches * self._batch_s))

    async def submit(self, spec: GenerationSpec, items: list[Item]) -> JobResult:
        """Queue one request and wait for its images.

        Raises:
            QueueFullError: ``queue_size`` requests are already waiting.
            InjectedFaultError: fault injection failed this request.
            ServerClosingError: the server stopped first.
            Exception: whatever the pipeline raised.
        """
        if len(self._pending) >= self._cfg.queue_size:
            raise QueueFullError(len(self._pending), self.retry_after_s())
        loop = asyncio.get_running_loop()
        job = _Job(spec, items, time.monotonic(), loop.create_future())
        self._pending.append(job)
        self._metrics.queue_depth.set(len(self._pending))
        self._arrived.set()
        try:
            return await job.future
        except asyncio.CancelledError:  # the client left or its time ran out: free the slot
            # now, so the queue bound counts only requests someone still waits for
            if job in self._pending:
                self._pending.remove(job)
                self._metrics.queue_depth.set(len(self._pending))
            raise

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch()
            started = time.monotonic()
            for job in jobs:
                self._metrics.queue_seconds.observe(started - job.enqueued)
            self._running = len(jobs)
            self._metrics.in_flight.set(self._running)
            try:
                outcomes = await loop.run_in_executor(self._executor, self._execute, jobs)
            except Exception as e:  # the whole pipeline call failed
                outcomes = [e] * len(jobs)
            finally:
                self._running = 0
                self._metrics.in_flight.set(0)
            elapsed = time.monotonic() - started
            self._batch_s = 0.7 * self._batch_s + 0.3 * elapsed
            images = sum(len(j.items) for j, o in zip(jobs, outcomes, strict=True)
                         if not isinstance(o, BaseException))
            for job, outcome in zip(jobs, outcomes, strict=True):
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(
                        JobResult(outcome, started - job.enqueued, elapsed, images)
                    )

    async def _next_batch(self) -> list[_Job]:
        """Wait for work, then for the batch to fill or the oldest request's wait to expire."""
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            while self._pending and self._pending[0].future.done():  # caller went away
                self._pending.popleft()
                self._metrics.queue_depth.set(len(self._pending))
            if not self._pending:
                continue
            head = self._pending[0]
            selected = self._compatible(head)
            remaining = head.enqueued + self._cfg.max_wait_s - time.monotonic()
            full = sum(len(j.items) for j in selected) >= self._cfg.max_batch
            if full or remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        for job in selected:
            self._pending.remove(job)
        self._metrics.queue_depth.set(len(self._pending))
        return selected

    def _compatible(self, head: _Job) -> list[_Job]:
        limit = max(self._cfg.max_batch, len(head.items))
        selected = [head]
        images = len(head.items)
        for job in list(self._pending)[1:]:
            if images >= limit:
                break
            if job.spec == head.spec and not job.future.done() and images + len(job.items) <= limit:
                selected.append(job)
                images += len(job.items)
        return selected

    def _execute(self, jobs: list[_Job]) -> list[list[bytes] | BaseException]:
        """Worker thread: faults first (where a real GPU stall would hit), then one call."""
        self._faults.delay_batch()
        outcomes: list[list[bytes] | BaseException] = []
        run: list[_Job] = []
        for job in jobs:
            if self._faults.fails():
                outcomes.append(InjectedFaultError("injected fault (--fault-error-rate)"))
            else:
                outcomes.append([])
                run.append(job)
        if run:
            items = [item for job in run for item in job.items]
            self._metrics.batch_size.observe(len(items))
            started = time.perf_counter()
            images = self._generate(run[0].spec, items)
            self._metrics.inference_seconds.observe(time.perf_counter() - started)
            it = iter(images)
            for i, outcome in enumerate(outcomes):
                if isinstance(outcome, list):
                    outcomes[i] = [next(it) for _ in jobs[i].items]
        return outcomes
