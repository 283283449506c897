"""The HTTP API (Starlette): two generation APIs, probes, capabilities and metrics.

Routes:
    ``POST /v1/images/generations``  OpenAI-compatible (``b64_json`` only), plus seed, steps,
                                     guidance_scale and negative_prompt.
    ``POST /sdapi/v1/txt2img``       AUTOMATIC1111-compatible subset.
    ``GET /healthz``                 the process is up (also while loading).
    ``GET /readyz``                  200 once admitted and the warm self-test passed; the body
                                     says ``degraded`` and why when ``--allow-degraded`` let a
                                     refused path through.
    ``GET /capabilities``            ``{"snapshot": ...}`` plus the pipeline's actual path.
    ``GET /metrics``                 Prometheus text format.

Only the generation routes need the bearer token (when one is configured): probes, metrics and
capabilities are read by kubelets, Prometheus and the controller, and reveal no user data.
Every error is JSON ``{"error": {"message", "type", "param", "code"}}`` with the reason; timings
come back in the body and in a ``Server-Timing`` header (milliseconds).

Bounds (:class:`~sd_server.config.Limits`, docs/threats.md): a body over ``max_body_bytes`` is
a 413 (read no further, streamed or not); out-of-range ``n``, steps, sizes, prompt lengths a
400 naming the field; a full queue a 429 with ``Retry-After``; a request past
``request_timeout_s`` (queue wait included) a 504; connections past ``max_connections`` get
uvicorn's 503.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gates.capability import (
    CapabilityRequirements,
    CapabilitySnapshot,
    Violation,
    capabilities_document,
)
from gates.engines import cache_listing, engines_built, startup_build_violations
from sd_server import __version__
from sd_server.admission import EXIT_REFUSED, path_violations
from sd_server.batching import Batcher, JobResult, QueueFullError, ServerClosingError
from sd_server.config import ServerConfig
from sd_server.engine import (
    Engine,
    GenerationSpec,
    Item,
    SelfTestResult,
    encode_png,
    error_kind,
)
from sd_server.faults import FaultInjector
from sd_server.metrics import Metrics
from sd_server.paths import PathReport
from sd_server.schemas import (
    A1111Request,
    Defaults,
    OpenAIImageRequest,
    RequestError,
    describe_validation_error,
    to_job,
)

__all__ = ["Phase", "ServerState", "create_app", "server_timing"]

log = logging.getLogger("sd_server")
T = TypeVar("T")



class Phase(StrEnum):
    LOADING = "loading"
    SELF_TEST = "self_test"
    READY = "ready"
    FAILED = "failed"


class ApiError(Exception):
    """An error answer: HTTP status, metric kind, message and the offending parameter."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.kind = kind
        self.param = param
        self.headers = headers or {}
        super().__init__(message)

    def response(self) -> JSONResponse:
        body = {"error": {"message": str(self), "type": self.kind, "param": self.param,
                          "code": self.status}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class ClientClosedError(Exception):
    """The client closed the connection before its images were ready."""


async def _unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` unless the client disconnects first; then cancel it and raise.

    Why: a client that timed out (a canary past its deadline, a user giving up) would otherwise
    keep its queued job, and the GPU would render images nobody reads while later requests wait
    behind them. A queued job is dropped before it reaches the GPU; a batch already running
    finishes (the pipeline call cannot be interrupted).

    Raises:
        ClientClosedError: the client went away first.
    """
    async def gone() -> None:  # the body is read: the next ASGI message is the disconnect
        while (await request.receive())["type"] != "http.disconnect":
            pass

    job = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if job.done():
        return job.result()
    job.cancel()
    raise ClientClosedError("client closed the connection before the images were ready")


async def _within(limit_s: float, work: Coroutine[Any, Any, T]) -> T:
    """``work``, cancelled past ``limit_s`` seconds (a queued job is then dropped, as for a
    client that left).

    Raises:
        TimeoutError: the limit passed first.
    """
    async with asyncio.timeout(limit_s):
        return await work


@dataclass
class ServerState:
    """Everything the routes read; written by the start-up task, then only by the batcher."""

    cfg: ServerConfig
    snapshot: CapabilitySnapshot
    requirements: list[CapabilityRequirements]
    preflight: list[Violation]
    metrics: Metrics
    faults: FaultInjector
    phase: Phase = Phase.LOADING
    report: PathReport | None = None
    self_test: SelfTestResult | None = None
    violations: tuple[Violation, ...] = ()
    error: str | None = None
    batcher: Batcher | None = None
    exit_code: int = 0
    defaults: Defaults | None = None

    def __post_init__(self) -> None:
        settings = self.faults.cfg
        self.metrics.fault_active.set(1 if self.faults.active else 0)
        for name in ("latency_s", "error_rate", "stall_rate", "stall_s"):
            self.metrics.fault_setting.labels(setting=name).set(getattr(settings, name))

    @property
    def degraded(self) -> bool:
        return bool(self.violations)

    async def start(self, on_fatal: Callable[[], None]) -> None:
        """Load, self-test, judge the path; on refusal or error ask the server to exit."""
        cache = self.cfg.path.ort_runtime.trt_cache_dir
        cached = cache_listing(cache) if cache is not None else {}
        try:
            engine = await asyncio.to_thread(Engine.load, self.cfg.path)
            self.report = engine.describe()
            self.phase = Phase.SELF_TEST
            self.defaults = Defaults(
                size=self.cfg.default_size or engine.native_size,
                steps=self.cfg.default_steps,
                guidance_scale=self.cfg.default_guidance_scale,
            )
            spec = GenerationSpec(self.defaults.size, self.defaults.size, self.defaults.steps,
                                  self.defaults.guidance_scale)
            self.self_test = await asyncio.to_thread(engine.self_test, spec)
            self.metrics.self_test_seconds.set(self.self_test.warm_s)
            self._export_path(self.report)
            if self.report.device_uuid:
                self.metrics.nvml.serving_uuids = (self.report.device_uuid,)
            # An engine built while loading or self-testing: the shipped engines do not match
            # this runtime, and every cold start pays the build (docs/engines.md).
            built = engines_built(cached, cache_listing(cache)) if cache is not None else []
            self.violations = (*self.preflight, *path_violations(
                self.cfg, self.requirements, self.report, self.self_test, engine.fallback_reason),
                *startup_build_violations(built=built))
        except Exception as e:
            log.exception("start-up failed")
            self.phase, self.error, self.exit_code = Phase.FAILED, f"{type(e).__name__}: {e}", 1
            on_fatal()
            return
        if self.violations and not self.cfg.admission.allow_degraded:
            self.phase, self.exit_code = Phase.FAILED, EXIT_REFUSED
            log.error("refusing to serve on a degraded path: %s",
                      "; ".join(v.message for v in self.violations))
            on_fatal()
            return
        if self.violations:
            log.warning("serving DEGRADED (--allow-degraded): %s",
                        "; ".join(v.message for v in self.violations))
        self.metrics.degraded.set(1 if self.violations else 0)
        self.batcher = Batcher(engine.render, encode_png, self.cfg.batching, self.metrics,
                               self.faults, initial_batch_s=self.self_test.warm_s)
        self.batcher.start()
        self.phase = Phase.READY
        self.metrics.ready.set(1)
        log.info("ready: %s", json.dumps(self._path_summary()))

    def _export_path(self, report: PathReport) -> None:
        unet = report.modules["unet"]
        self.metrics.path_info.labels(
            device=unet.device,
            dtype=unet.dtype.removeprefix("torch."),
            attention=unet.attention,
            unet_backend=unet.backend,
            ort_providers=",".join(report.ort.bound) if report.ort else "",
        ).set(1)

    def _path_summary(self) -> dict[str, Any]:
        assert self.report is not None
        return {n: {"device": m.device, "dtype": m.dtype, "attention": m.attention}
                for n, m in self.report.modules.items()}

    def capabilities(self) -> dict[str, Any]:
        """The ``/capabilities`` body, validated by the one model the analyzer reads it with
        (:class:`gates.capability.collect.CapabilitiesDocument`)."""
        return capabilities_document(
            self.snapshot,
            pipeline=self.report.to_json() if self.report else None,
            degraded=self.degraded,
            violations=[v.model_dump(mode="json") for v in self.violations],
            fault_injection=self.faults.settings(),
            # The server's own facts: kept as they are (the document allows extra keys).
            server={"name": "sd-server", "version": __version__},
            phase=self.phase.value,
            model=self.cfg.path.model,
            requested=_jsonable(asdict(self.cfg.path)),
            self_test=_jsonable(asdict(self.self_test)) if self.self_test else None,
            batching=asdict(self.cfg.batching),
            limits=asdict(self.cfg.limits),
            defaults=asdict(self.defaults) if self.defaults else None,
            auth_required=self.cfg.auth_token is not None,
            error=self.error,
        )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _authorize(state: ServerState, request: Request) -> None:
    token = state.cfg.auth_token
    if token is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="sd-server"'}
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "auth", "missing bearer token (Authorization: Bearer ...)",
                       headers=challenge)
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "auth", "invalid bearer token", headers=challenge)


async def _read_json(request: Request, max_bytes: int) -> Any:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if ctype != "application/json":
        raise ApiError(415, "validation", f"content-type must be application/json, got {ctype}")
    declared = request.headers.get("content-length")
    too_big = ApiError(413, "body_too_large", f"request body over {max_bytes} bytes")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_big
    try:
        return json.loads(body)
    except ValueError as e:
        raise ApiError(400, "validation", f"body is not valid JSON: {e}") from e


def _timings(result: JobResult, total_s: float) -> dict[str, float]:
    return {
        "queue_s": round(result.queue_s, 6),
        "inference_s": round(result.inference_s, 6),
        "encode_s": round(result.encode_s, 6),
        "total_s": round(total_s, 6),
        "batch_images": result.batch_images,
    }


def _openai_body(req: OpenAIImageRequest, spec: GenerationSpec, items: list[Item],
                 images: list[str], timings: dict[str, float]) -> dict[str, Any]:
    return {
        "created": int(time.time()),
        "data": [{"b64_json": img, "seed": item.seed} for img, item in zip(images, items,
                                                                           strict=True)],
        "size": f"{spec.width}x{spec.height}",
        "steps": spec.steps,
        "guidance_scale": spec.guidance_scale,
        "timings": timings,
    }


def _a1111_body(req: A1111Request, spec: GenerationSpec, items: list[Item],
                images: list[str], timings: dict[str, float]) -> dict[str, Any]:
    seeds = [i.seed for i in items]
    parameters = {
        **req.model_dump(),
        "seed": seeds[0],
        "steps": spec.steps,
        "cfg_scale": spec.guidance_scale,
        "width": spec.width,
        "height": spec.height,
    }
    info = {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "seed": seeds[0],
        "all_seeds": seeds,
        "steps": spec.steps,
        "cfg_scale": spec.guidance_scale,
        "width": spec.width,
        "height": spec.height,
        "sampler_name": "DDIM",
        "timings": timings,
    }
    return {"images": images, "parameters": parameters, "info": json.dumps(info),
            "timings": timings}


async def _generate(state: ServerState, request: Request, endpoint: str, model: type[Any],
                    render: Callable[..., dict[str, Any]]) -> Response:
    """One generation request of either API: authorize, validate, batch, answer."""
    metrics = state.metrics
    started = time.monotonic()
    try:
        _authorize(state, request)
        if state.phase is not Phase.READY or state.batcher is None or state.defaults is None:
            raise ApiError(503, "not_ready", f"not ready ({state.phase.value})",
                           headers={"Retry-After": "5"})
        data = await _read_json(request, state.cfg.limits.max_body_bytes)
        try:
            req = model.model_validate(data)
        except ValidationError as e:
            message, param = describe_validation_error(e)
            raise ApiError(400, "validation", message, param) from e
        try:
            spec, items = to_job(req, state.cfg.limits, state.defaults)
        except RequestError as e:
            raise ApiError(e.status, "validation", str(e), e.param) from e
        limit_s = state.cfg.limits.request_timeout_s
        try:
            result = await _unless_client_leaves(
                request, _within(limit_s, state.batcher.submit(spec, items)))
        except ClientClosedError as e:
            raise ApiError(499, "client_closed", str(e)) from e
        except TimeoutError as e:
            raise ApiError(504, "timeout", f"no images within the server's request timeout "
                           f"of {limit_s:g} s (queue wait included)") from e
        except QueueFullError as e:  # the client's to slow down: 429, as rate limiters say
            raise ApiError(429, "queue_full", f"{e}; retry after {e.retry_after_s} s",
                           headers={"Retry-After": str(e.retry_after_s)}) from e
        except ServerClosingError as e:
            raise ApiError(503, "not_ready", str(e), headers={"Retry-After": "5"}) from e
        except Exception as e:
            kind = error_kind(e)
            log.warning("generation failed (%s): %s", kind, e)
            raise ApiError(500, kind, f"{type(e).__name__}: {e}") from e
    except ApiError as e:
        metrics.errors.labels(kind=e.kind).inc()
        metrics.requests.labels(endpoint=endpoint, code=str(e.status)).inc()
        return e.response()
    total = time.monotonic() - started
    timings = _timings(result, total)
    images = [base64.b64encode(png).decode() for png in result.images]
    body = render(req, spec, items, images, timings)
    metrics.request_seconds.observe(total)
    metrics.images.inc(len(images))
    metrics.requests.labels(endpoint=endpoint, code="200").inc()
    return JSONResponse(body, headers={"Server-Timing": server_timing(result, total),
                                       "X-Batch-Images": str(result.batch_images)})


def server_timing(result: JobResult, total_s: float) -> str:
    """The ``Server-Timing`` header (W3C Server Timing, durations in milliseconds).

    ``queue`` (waiting for a batch), ``inference`` (the pipeline call of the request's batch),
    ``encode`` (its PNGs) and ``total`` (request received to images ready, JSON not included):
    a client subtracts ``total`` from its own latency to see what the network and its own
    stack add, the same on both arms of a canary unless one of them differs there.
    """
    parts = (("queue", result.queue_s), ("inference", result.inference_s),
             ("encode", result.encode_s), ("total", total_s))
    return ", ".join(f"{name};dur={seconds * 1e3:.3f}" for name, seconds in parts)


def create_app(state: ServerState, on_fatal: Callable[[], None]) -> Starlette:
    """The ASGI app; its lifespan starts loading in the background and stops the batcher."""
    metrics = state.metrics

    async def openai(request: Request) -> Response:
        return await _generate(state, request, "openai", OpenAIImageRequest, _openai_body)

    async def a1111(request: Request) -> Response:
        return await _generate(state, request, "a1111", A1111Request, _a1111_body)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "phase": state.phase.value})

    async def readyz(request: Request) -> Response:
        ready = state.phase is Phase.READY
        body = {
            "ready": ready,
            "phase": state.phase.value,
            "degraded": state.degraded,
            "violations": [v.model_dump(mode="json") for v in state.violations],
            "error": state.error,
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    async def capabilities(request: Request) -> Response:
        return JSONResponse(state.capabilities())

    async def prometheus(request: Request) -> Response:
        if state.batcher is not None:
            metrics.queue_depth.set(state.batcher.depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        starting = asyncio.create_task(state.start(on_fatal), name="sd-start")
        try:
            yield
        finally:
            starting.cancel()
            if state.batcher is not None:
                await state.batcher.close()

    routes = [
        Route("/v1/images/generations", openai, methods=["POST"]),
        Route("/sdapi/v1/txt2img", a1111, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/capabilities", capabilities, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return ApiError(exc.status_code, "invalid_request", str(exc.detail)).response()

    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error})
