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

Pipeline: the inference thread only runs the pipeline call; each request's images are encoded as
PNG by a pool of ``encode_workers`` threads while the inference thread starts the next batch
(on an H100, encoding on the inference thread held GPU utilization at 62-64% at saturation). At
most ``2 * encode_workers`` requests wait for or undergo encoding: past that the batcher waits
before starting another batch, so a slow encoder slows intake instead of growing memory.
``encode_workers = 0`` encodes on the inference thread after each batch (the baseline path).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from sd_server.config import BatchingConfig
from sd_server.engine import GenerationSpec, Item
from sd_server.faults import FaultInjector, InjectedFaultError
from sd_server.metrics import Metrics

__all__ = ["Batcher", "JobResult", "QueueFullError", "ServerClosingError"]

#: One pipeline call: one RGB ``uint8`` array per item, in order.
Render = Callable[[GenerationSpec, Sequence[Item]], Sequence[np.ndarray]]
#: One image as encoded bytes (PNG); must be thread-safe.
Encode = Callable[[np.ndarray], bytes]


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
    encode_s: float
    batch_images: int
    #: The thread that encoded the images: says whether encoding left the inference thread.
    encode_thread: str


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
        render: Render,
        encode: Encode,
        cfg: BatchingConfig,
        metrics: Metrics,
        faults: FaultInjector,
        *,
        initial_batch_s: float = 1.0,
    ) -> None:
        self._render = render
        self._encode = encode
        self._cfg = cfg
        self._metrics = metrics
        self._faults = faults
        self._pending: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._running = 0
        self._batch_s = initial_batch_s  # EWMA of batch wall time, for Retry-After
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sd-infer")
        self._encoder = (ThreadPoolExecutor(max_workers=cfg.encode_workers,
                                            thread_name_prefix="sd-encode")
                         if cfg.encode_workers > 0 else None)
        self._encode_slots = asyncio.Semaphore(max(1, 2 * cfg.encode_workers))
        self._encoding: dict[asyncio.Task[None], _Job] = {}  # requests being encoded
        self._current: list[_Job] = []  # the batch being rendered (failed on close)
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sd-batcher")

    async def close(self) -> None:
        """Stop the worker and the encoders, and fail whatever still waits."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        encoding = dict(self._encoding)  # their done callbacks empty the original
        for task in encoding:
            task.cancel()
        await asyncio.gather(*encoding, return_exceptions=True)
        for job in [*self._pending, *self._current, *encoding.values()]:
            if not job.future.done():
                job.future.set_exception(ServerClosingError("server shutting down"))
        self._pending.clear()
        self._metrics.queue_depth.set(0)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._encoder is not None:
            self._encoder.shutdown(wait=False, cancel_futures=True)

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
            self._current = jobs
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
                    continue
                timing = (started - job.enqueued, elapsed, images)
                if self._encoder is None:  # baseline: on the inference thread, batch by batch
                    await self._encoded(job, outcome, *timing)
                    continue
                await self._encode_slots.acquire()  # the bound on requests being encoded
                task = loop.create_task(self._encoded(job, outcome, *timing))
                self._encoding[task] = job
                task.add_done_callback(self._encode_done)
            self._current = []

    async def _encoded(self, job: _Job, pixels: Sequence[np.ndarray], queue_s: float,
                       inference_s: float, batch_images: int) -> None:
        """Encode one request's images (in the encode pool, else the inference thread) and
        answer it; an encoder's exception goes to the request."""
        if job.future.done():  # the caller left: nobody reads these images
            return
        try:
            executor = self._encoder or self._executor
            images, seconds, thread = await asyncio.get_running_loop().run_in_executor(
                executor, self._encode_all, pixels)
        except Exception as e:
            if not job.future.done():
                job.future.set_exception(e)
            return
        self._metrics.encode_seconds.observe(seconds)
        if not job.future.done():
            job.future.set_result(JobResult(images, queue_s, inference_s, seconds, batch_images,
                                            thread))

    def _encode_done(self, task: asyncio.Task[None]) -> None:
        """An encoding task ended (answered, failed or cancelled by :meth:`close`, which then
        fails its request): free its slot."""
        self._encoding.pop(task, None)
        self._encode_slots.release()

    def _encode_all(self, pixels: Sequence[np.ndarray]) -> tuple[list[bytes], float, str]:
        """Encoder thread: one request's images, the time taken and the thread's name."""
        started = time.perf_counter()
        images = [self._encode(p) for p in pixels]
        return images, time.perf_counter() - started, threading.current_thread().name

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

    def _execute(self, jobs: list[_Job]) -> list[list[np.ndarray] | BaseException]:
        """Inference thread: faults first (where a real GPU stall would hit), then one call."""
        self._faults.delay_batch()
        outcomes: list[list[np.ndarray] | BaseException] = []
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
            images = self._render(run[0].spec, items)
            self._metrics.inference_seconds.observe(time.perf_counter() - started)
            it = iter(images)
            for i, outcome in enumerate(outcomes):
                if isinstance(outcome, list):
                    outcomes[i] = [next(it) for _ in jobs[i].items]
        return outcomes
