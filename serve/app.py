"""The HTTP service: on-demand synthesis over the same graph and settings as the batch job.

POST /v1/synthesize          one reference in, judged samples out
POST /v1/synthesize/stream   the same as server-sent events (progress, sample, done)
GET  /v1/feedback/{id}       the cached reference-level feedback
GET  /healthz /readyz /metrics

At start-up the LLM endpoints get the batch run's pre-flight check (``llm.preflight``:
reachable, the key accepted, the model served); the service starts either way and
``/readyz`` runs the check again, answering 503 with what is wrong until it passes.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dataset.quality import QualityGate
from graph.builder import compile_graph
from graph.checkpoint import sqlite_saver
from llm.client import LLMClient
from llm.factory import run_clients
from llm.preflight import EndpointCheck, check_all, targets
from llm.stops import RunStop
from serve.feedback_cache import feedback_cache
from serve.metrics import ServiceMetrics
from serve.synthesis import Event, synthesize
from state.api import ErrorBody, FeedbackView, Health, SynthesizeRequest, SynthesizeResponse
from state.logs import redact
from state.settings import RefedSettings

log = structlog.get_logger("refed.serve")

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token."},
    413: {"model": ErrorBody, "description": "Body larger than max_body_bytes."},
    422: {"model": ErrorBody, "description": "Invalid request body."},
    502: {
        "model": ErrorBody,
        "description": "The LLM server answered with an error, or with an answer that "
        "could not be used (not JSON, cut off, not of the schema).",
    },
    503: {
        "model": ErrorBody,
        "description": "Too many requests in flight, or the LLM server "
        "is unreachable or overloaded (see Retry-After).",
    },
    504: {"model": ErrorBody, "description": "The LLM server timed out."},
}


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_json(
                send, 413, {"error": "body_too_large", "detail": f"body over {self.limit} bytes"}
            )
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _send_json(
                send, 413, {"error": "body_too_large", "detail": f"body over {self.limit} bytes"}
            )


class _TooLarge(Exception):
    pass


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


_OVERLOADED = ("HTTP 429", "HTTP 503")
"""Upstream answers that mean "busy, come back later" (after our own retries)."""


def llm_failure_status(error: str) -> tuple[int, str | None]:
    """HTTP status (and Retry-After) for a request the LLM server made fail.

    Unreachable, reset or overloaded (429/503 after retries): 503 with Retry-After, as
    the request may well succeed later. No answer in time: 504. Anything else it did
    answer (another error status, a body that is not JSON, a cut-off or schema-breaking
    answer): 502. A failure that names several causes takes the first of these rules.
    """
    if "connection:" in error or any(code in error for code in _OVERLOADED):
        return 503, "5"
    if "timeout:" in error:
        return 504, None
    return 502, None


READY_TIMEOUT = 5.0
"""Seconds /readyz waits for an endpoint's model list."""


def readiness(checks: list[EndpointCheck]) -> tuple[bool, str | None]:
    """Ready when one generator endpoint passes and, with a judge of its own, one judge's;
    the detail names what failed."""
    ok = {c.target.role for c in checks if c.ok}
    ready = "generator" in ok and (
        "judge" in ok or not any(c.target.role == "judge" for c in checks)
    )
    problems = [c.message() for c in checks if not c.ok]
    return ready, "; ".join(problems) or None


def create_app(
    settings: RefedSettings,
    *,
    base_url: str,
    model: str,
    client: LLMClient | None = None,
) -> FastAPI:
    """The service app; ``client`` replaces the OpenAI-compatible one (tests)."""
    metrics = ServiceMetrics()
    settings = settings.model_copy(update={"base_url": base_url, "model": model})
    clients = run_clients(settings, "serve", client, prefix="serve", circuit=False)
    endpoints = targets(settings)
    api_key = settings.api_key.get_secret_value()
    cache = feedback_cache(settings, model)
    quality = QualityGate.from_settings(settings)  # benchmarks load once, here
    token = settings.service_token.get_secret_value() if settings.service_token else None
    gate = asyncio.Semaphore(settings.max_in_flight_requests)
    shared: dict[str, Any] = {}
    working: set[asyncio.Task[Any]] = set()
    """Synthesis tasks of /v1/synthesize still running (cancelled at shutdown)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await cache.open()
        checkpoints = settings.service_db.with_name(
            settings.service_db.stem + "-checkpoints.sqlite"
        )
        async with sqlite_saver(checkpoints) as saver:
            shared["graph"] = compile_graph(saver)
            shared["saver"] = saver
            if client is None:  # (a client given by a test has no endpoint to check)
                checks = await check_all(endpoints, api_key, timeout=READY_TIMEOUT)
                ready, problems = readiness(checks)
                if not ready:  # up anyway: /readyz says what is wrong until it is fixed
                    log.warning("llm_preflight_failed", base_url=base_url, problems=problems)
            log.info("service_ready", base_url=base_url, model=model)
            yield
            # uvicorn has drained (or cancelled) the requests; anything still going on
            # is cut here, before the stores close under it.
            leftover = [t for t in working if not t.done()]
            for t in leftover:
                t.cancel()
            await asyncio.gather(*leftover, return_exceptions=True)
            if leftover:
                log.warning("shutdown_cancelled", requests=len(leftover))
        await cache.close()
        await clients.aclose()
        log.info("service_stopped")

    app = FastAPI(
        title="Refed",
        version="0.1.0",
        summary="On-demand synthesis of judged instruction data from a reference pair, "
        "with reference-level feedback.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    base_context = clients.context

    bearer = HTTPBearer(auto_error=False)

    async def require_token(
        creds: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        if token is None:
            return
        if creds is None or not secrets.compare_digest(creds.credentials, token):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        body = ErrorBody(error=_error_name(exc.status_code), detail=str(exc.detail))
        return JSONResponse(body.model_dump(), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
            for e in exc.errors()
        ]
        return JSONResponse(ErrorBody(error="invalid_request", detail=detail).model_dump(), 422)

    @app.middleware("http")
    async def count(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        route = (
            request.url.path
            if not request.url.path.startswith("/v1/feedback/")
            else "/v1/feedback/{id}"
        )
        started = time.perf_counter()
        response = await call_next(request)
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    def check_limits(req: SynthesizeRequest) -> None:
        if req.samples > settings.max_samples_per_request:
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "samples"),
                        "msg": f"at most {settings.max_samples_per_request} samples per request",
                        "type": "value_error",
                    }
                ]
            )

    def enter_gate() -> None:
        if gate.locked():
            metrics.rejected_requests.labels("in_flight").inc()
            raise HTTPException(
                503,
                f"{settings.max_in_flight_requests} requests in flight; retry later",
                headers={"Retry-After": "1"},
            )

    async def run(req: SynthesizeRequest) -> AsyncIterator[Event]:
        async with gate:
            metrics.in_flight.inc()
            try:
                async for event in synthesize(shared["graph"], cache, base_context, req, quality):
                    if event.name == "done":
                        done = SynthesizeResponse.model_validate(event.data)
                        metrics.add_usage(done.usage)
                        metrics.cache.labels("hit" if done.feedback_cached else "miss").inc()
                        for s in done.samples + done.rejected:
                            metrics.samples.labels(s.status).inc()
                    yield event
            finally:
                metrics.in_flight.dec()

    @app.post(
        "/v1/synthesize",
        response_model=SynthesizeResponse,
        responses=ERRORS,
        dependencies=[Depends(require_token)],
        tags=["synthesis"],
    )
    async def synthesize_once(req: SynthesizeRequest, request: Request) -> Any:
        """Derive new judged samples from one reference pair."""
        check_limits(req)
        enter_gate()

        async def work() -> SynthesizeResponse:
            last: Event | None = None
            async for event in run(req):
                last = event
            assert last is not None and last.name == "done"
            return SynthesizeResponse.model_validate(last.data)

        task = asyncio.create_task(work())
        working.add(task)
        task.add_done_callback(working.discard)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.25)
                if done:
                    break
                if await request.is_disconnected():
                    task.cancel()
                    log.info("client_disconnected", path="/v1/synthesize")
                    return Response(status_code=499)
        except asyncio.CancelledError:
            task.cancel()  # this request was cancelled (shutdown grace over): so is its work
            raise
        try:
            result = task.result()
        except RunStop as exc:  # the LLM server refuses every request (key, model)
            return JSONResponse(
                ErrorBody(error="llm_failed", detail=redact(str(exc))).model_dump(), 502
            )
        if result.error and not result.samples and not result.rejected:
            status, retry_after = llm_failure_status(result.error)
            return JSONResponse(
                ErrorBody(error="llm_failed", detail=redact(result.error)).model_dump(),
                status,
                headers={"Retry-After": retry_after} if retry_after else None,
            )
        return result

    @app.post(
        "/v1/synthesize/stream",
        responses={
            **ERRORS,
            200: {
                "content": {"text/event-stream": {}},
                "description": "Server-sent events: `progress` {node}, `sample` (a Sample), "
                "and last `done` (a SynthesizeResponse).",
            },
        },
        dependencies=[Depends(require_token)],
        tags=["synthesis"],
    )
    async def synthesize_stream(req: SynthesizeRequest) -> StreamingResponse:
        """The same as /v1/synthesize, as server-sent events while the work goes on."""
        check_limits(req)
        enter_gate()

        async def events() -> AsyncIterator[bytes]:
            try:
                async for event in run(req):
                    yield f"event: {event.name}\ndata: {json.dumps(event.data)}\n\n".encode()
            except RunStop as exc:  # the LLM server refuses every request (key, model)
                error = {"error": "llm_failed", "detail": redact(str(exc))}
                yield f"event: error\ndata: {json.dumps(error)}\n\n".encode()
            except Exception as exc:  # the stream has started: report in-band
                log.error("stream_failed", error=redact(repr(exc)))
                yield f"event: error\ndata: {json.dumps({'error': 'internal'})}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get(
        "/v1/feedback/{reference_id}",
        response_model=FeedbackView,
        responses={404: {"model": ErrorBody}, 401: ERRORS[401]},
        dependencies=[Depends(require_token)],
        tags=["synthesis"],
    )
    async def get_feedback(reference_id: str) -> FeedbackView:
        """The cached reference-level feedback for a reference id (this model, these prompts)."""
        feedback = await cache.by_reference_id(reference_id)
        if feedback is None:
            raise HTTPException(404, f"no cached feedback for reference {reference_id!r}")
        return FeedbackView(
            reference_id=reference_id,
            model=model,
            prompt_version=cache.prompt_version,
            feedback=feedback,
        )

    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @app.get(
        "/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["operations"]
    )
    async def readyz() -> Any:
        """An LLM endpoint passes the pre-flight check: it answers, takes the key and
        serves the model (any one of several endpoints; the judge's too, if its own)."""
        ready, problems = readiness(await check_all(endpoints, api_key, timeout=READY_TIMEOUT))
        if ready:
            return Health(status="ok", detail=redact(problems) if problems else None)
        return JSONResponse(
            Health(status="unavailable", detail=redact(problems or "")).model_dump(), 503
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def prometheus() -> Response:
        """Prometheus metrics: requests, latency, LLM calls, tokens, cache hits, in flight."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.metrics = metrics
    return app


def _error_name(status: int) -> str:
    return {
        401: "unauthorized",
        404: "not_found",
        413: "body_too_large",
        429: "too_many_requests",
        503: "unavailable",
    }.get(status, "error")
