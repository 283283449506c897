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
asked it less than :data:`~gates.canary.loops.STOP_CHECK_S` ago) and every
:data:`~gates.canary.loops.STOP_POLL_S` whatever happens,
warm-up included; what is in flight then is cancelled and recorded as such, like at the
deadline.

Bodies are read streamed, at most ``max_body_bytes`` of each (:mod:`gates.bounded`): a larger
answer is a ``bad_payload`` error, read no further, so an endless body cannot exhaust the
client's memory. The per-request ``timeout_s`` bounds the whole exchange (connect, headers and
body), and latency runs until the body's last byte, as before.

A colour is a fleet: each arm's requests are spread over every instance the config lists
(seeded shuffled round-robin, :mod:`gates.canary.fleet`; warm-up goes to every instance), and
the result keeps what each instance served (``instances``); with several green instances
each is also judged on its own (:mod:`gates.canary.evaluation`).

Connections: each request in flight uses a small httpx client of its instance, reused by later
requests (an open-loop slice takes one client per instance it reaches). Its transport is
:class:`gates.wire.TimedTransport`, which stamps each answer's last byte at the socket, so the
client's own work on other answers never becomes latency. Small clients also keep each
connection pool at ``K`` connections or fewer (one shared pool of 64 cost milliseconds of client
CPU per request at concurrency 32 when the canary used httpcore's pool).

The pieces: the settings (:mod:`gates.canary.config`), one request
(:mod:`gates.canary.exchange`), the loops (:mod:`gates.canary.loops`), what a run reports
(:mod:`gates.canary.outcome`); this module runs them and keeps their public names.

Prompt ``i mod len(prompts)`` drives slice ``i``; its seed is the prompt's seed plus the cycle
number ``i // len(prompts)``, so a response cache on either arm cannot answer repeated prompts.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from gates.canary.config import CanaryConfig, CanarySettings
from gates.canary.exchange import parse_server_timing
from gates.canary.loops import CanaryRun, StopCancelled, StopDecided
from gates.canary.outcome import CanaryProgress, CanaryResult, StopReason
from gates.canary.records import ARMS, RecordWriter
from gates.gate import combine
from gates.wire import TimedTransport

# The run's public names, wherever they are defined (callers import them from here).
__all__ = ["CanaryConfig", "CanaryProgress", "CanaryResult", "CanarySettings", "StopReason",
           "parse_server_timing", "run_canary", "run_canary_sync"]


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
        transport: an httpx transport for both arms (tests); otherwise each client gets its own
            :class:`gates.wire.TimedTransport` (socket-side timing).
        should_stop: returns why the run must stop now (e.g. ``"abort requested by user"``)
            or ``None``; asked after each finished slice and every 0.25 s (module docstring).
            On a reason, everything in flight is cancelled and the result has ``stopped_by``
            ``cancelled``. Called in the event loop's thread: keep it quick.

    Raises:
        OSError: the records directory cannot be written.
    """
    # One TLS context for every client: building one loads the CA bundle (~35 ms of CPU).
    tls = _unverified() if config.verify is False else \
        ssl.create_default_context(cafile=None if config.verify is True else config.verify)

    def new_client(base_url: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=base_url, headers=dict(config.headers), timeout=None,
            transport=transport or TimedTransport(ssl_context=tls), follow_redirects=False)

    writer = RecordWriter(records_dir) if records_dir is not None else None
    run = CanaryRun(config, new_client, writer, on_progress, should_stop)
    stopped_by: StopReason = "budget"
    try:
        async with asyncio.timeout(config.deadline_s):
            try:
                await run.supervised()
            except* StopDecided:
                stopped_by = "decided"
            except* StopCancelled:
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


def _unverified() -> ssl.SSLContext:
    """``verify: false``: TLS without checking the certificate or the host name."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def run_canary_sync(config: CanaryConfig, **kwargs: Any) -> CanaryResult:
    """:func:`run_canary` in a fresh event loop (for callers without one)."""
    return asyncio.run(run_canary(config, **kwargs))


def _result(run: CanaryRun, stopped_by: StopReason) -> CanaryResult:
    ev = run.evaluation
    gates = ev.gate_results()
    verdict, reason = combine(gates)
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
        records={k: str(v) for k, v in run.writer.paths.items()} if run.writer else None,
        instances=ev.instance_outcomes(gates))
